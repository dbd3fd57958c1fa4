"""Tiny random diffusers pipelines of the real classes, saved to disk, for tests (nothing downloads).

`build_tiny_pipeline(kind, out_dir)` writes a pipeline directory that
`diffusers.DiffusionPipeline.from_pretrained(out_dir, local_files_only=True)` loads as it would a
real checkpoint: the real pipeline, denoiser, VAE, text-encoder, tokenizer and scheduler classes,
with random weights and tiny sizes (diffusers' own `get_dummy_components` style). Every kind
draws 16x16 px images from an 8x8x4 latent (VAE with 2 blocks: downsampling factor 2).

kinds: `sd` (StableDiffusionPipeline), `sdxl` (StableDiffusionXLPipeline, two CLIP encoders),
`pixart-alpha` / `pixart-sigma` (PixArt{Alpha,Sigma}Pipeline with a T5 encoder), `dit`
(DiTPipeline, 1000 classes with an `id2label` map).

Tokenizers are built here too: CLIP's from a hand-written vocab.json + merges.txt, T5's from a
sentencepiece unigram model trained in the function on generated words (the hub's
hf-internal-testing tiny tokenizers cannot be downloaded).

Calling notes: the tiny PixArt pipelines need `use_resolution_binning=False` (diffusers bins only
sample sizes 32/64/128/256); DiT's unconditional class under guidance is id 1000, so its
transformer has `num_embeds_ada_norm=1000`.

Fixtures: `tiny_pipelines` (session-scoped; `tiny_pipelines("sd") -> Path`, built once per
session) and `tiny_pipeline_fixture(kind)` (makes a session fixture for one kind), both meant to
be imported into a conftest.
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch

KINDS = ("sd", "sdxl", "pixart-alpha", "pixart-sigma", "dit")
# the other families (issue #22): flow-matching, few-step, unconditional and image-conditioned
FAMILY_KINDS = ("flux", "sana", "sd3", "hunyuan", "lcm", "ddpm", "img2img", "controlnet")
LATENT = 8  # latent side; the VAE's 2 blocks make images 2x larger (16 px)
TEXT_WIDTH = 32  # hidden size of every tiny text encoder
CLASS_NAMES = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead")


# --- shared components ---------------------------------------------------------------------------
def tiny_vae(**extra):
    """AutoencoderKL with 2 blocks (downsampling factor 2), 4 latent channels, 16 px images
    (`extra`: e.g. shift_factor, which SD3/FLUX read)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                         layers_per_block=1, norm_num_groups=8, sample_size=2 * LATENT, **extra)


# Byte-level BPE merges for a few frequent English pairs; every single byte is in the vocabulary,
# so any prompt tokenizes (unmerged bytes stay single-byte tokens).
_CLIP_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "i n", "in g</w>", "o f</w>", "o n</w>",
                "e r</w>", "r e", "e d</w>", "o r", "s t")


def byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte -> printable unicode alphabet (the characters BPE runs on)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer():
    """CLIPTokenizer from a hand-written vocab.json + merges.txt (77 tokens, like CLIP)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in byte_alphabet():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for merge in _CLIP_MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_CLIP_MERGES) + "\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def tiny_clip_text_encoder(tokenizer, with_projection: bool = False, seed: int = 0):
    """CLIPTextModel (or ...WithProjection, SDXL's second encoder) of width 32, 2 layers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=TEXT_WIDTH, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _words(n: int, rng: random.Random) -> list[str]:
    # a few real words (so prompts like "a red cube" get whole-word pieces) + generated ones
    real = ("a the of and photo red blue cube lion riding bike dog cat house tree car sky".split())
    made = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
            for _ in range(n)]
    return real + made


def tiny_t5_tokenizer(vocab_size: int = 200):
    """T5Tokenizer from a sentencepiece unigram model trained here on ~400 generated words.

    Ids follow T5: pad 0, eos 1, unk 2; no extra_ids. The pieces and scores are read back with
    sentencepiece itself and handed to T5Tokenizer, which builds the same unigram model.
    """
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(0)
    words = _words(400, rng)
    sentences = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2, num_threads=1)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # T5Tokenizer(vocab=...) rather than from spiece.model: transformers' converter needs a
    # protobuf runtime matching its generated code, which this environment does not have
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_t5_encoder(tokenizer, seed: int = 0):
    """T5EncoderModel of width 32, 2 layers (PixArt's text encoder class)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_ff=37, d_kv=8, num_heads=4,
                      num_layers=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


# --- pipelines -------------------------------------------------------------------------------------
def tiny_sd():
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=8)
    tokenizer = tiny_clip_tokenizer()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(tokenizer),
                                   tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    time_dim = 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(4, 8),
        use_linear_projection=True, norm_num_groups=8, transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * time_dim)  # pooled + 6 time ids
    tokenizer = tiny_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(tokenizer, seed=0),
        text_encoder_2=tiny_clip_text_encoder(tokenizer, with_projection=True, seed=1),
        tokenizer=tokenizer, tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
        add_watermarker=False)


def tiny_pixart(sigma: bool):
    from diffusers import (DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline,
                           PixArtTransformer2DModel)

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=LATENT, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=TEXT_WIDTH, in_channels=4, out_channels=8,  # learned sigma: 2x channels
        cross_attention_dim=16, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, interpolation_scale=2 if sigma else 1,
        use_additional_conditions=False)  # the pipelines pass micro-conditions only at 1024 px
    tokenizer = tiny_t5_tokenizer()
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(tokenizer=tokenizer, text_encoder=tiny_t5_encoder(tokenizer), vae=tiny_vae(),
               transformer=transformer, scheduler=DPMSolverMultistepScheduler())


def tiny_dit():
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=LATENT, patch_size=2, in_channels=4, out_channels=8, num_layers=2,
        num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", activation_fn="gelu-approximate", attention_bias=True)
    id2label = {i: CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class {i}" for i in range(1000)}
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler(),
                       id2label=id2label)
    # DiTPipeline does not register id2label; real checkpoints carry it in model_index.json
    pipe.register_to_config(id2label={str(k): v for k, v in id2label.items()})
    return pipe


# --- the other families (issue #22) --------------------------------------------------------------
def tiny_bert_tokenizer():
    """BertTokenizer from a hand-written vocab.txt (Hunyuan-DiT's first tokenizer), 77 tokens."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + _words(0, random.Random(0))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
        return BertTokenizer(str(Path(tmp) / "vocab.txt"), model_max_length=77)


def tiny_flux():
    """FluxPipeline: CLIP + T5 text encoders, a FluxTransformer2DModel with guidance embedding
    (FLUX.1-dev style: guidance_scale is embedded, no CFG), flow-matching Euler. FLUX has no
    sample_size: its native size is the pipeline's default_sample_size (128) x the VAE factor."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=True, axes_dims_rope=(4, 4, 8))  # 4 latent channels packed 2x2
    clip = tiny_clip_tokenizer()
    t5 = tiny_t5_tokenizer()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.0),
                        text_encoder=tiny_clip_text_encoder(clip), tokenizer=clip,
                        text_encoder_2=tiny_t5_encoder(t5), tokenizer_2=t5,
                        transformer=transformer, image_encoder=None, feature_extractor=None)


def tiny_sana():
    """SanaPipeline: a Gemma2 text encoder (a T5 sentencepiece tokenizer stands in for Gemma's),
    a DC-AE with 2 blocks (factor 2), SanaTransformer2DModel, flow-matching DPM-Solver. 32 px:
    SanaPipeline refuses sides that are not multiples of 32."""
    from diffusers import (AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline,
                           SanaTransformer2DModel)
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
        cross_attention_dim=8, caption_channels=8, sample_size=2 * LATENT)  # Sana: sides % 32 == 0
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1), downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407)
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=1024,
        pad_token_id=0, eos_token_id=1, bos_token_id=1)).eval()
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=3.0)
    return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                        transformer=transformer, scheduler=scheduler)


def tiny_sd3():
    """StableDiffusion3Pipeline: two CLIP (with projection) + T5, SD3Transformer2DModel, flow
    matching."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=2 * TEXT_WIDTH, out_channels=4, pos_embed_max_size=LATENT)
    clip = tiny_clip_tokenizer()
    t5 = tiny_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0), text_encoder=tiny_clip_text_encoder(clip, True, seed=0),
        tokenizer=clip, text_encoder_2=tiny_clip_text_encoder(clip, True, seed=1),
        tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=tiny_t5_encoder(t5), tokenizer_3=t5,
        image_encoder=None, feature_extractor=None)


def tiny_hunyuan():
    """HunyuanDiTPipeline: BERT + T5 encoders, HunyuanDiT2DModel, v-prediction DDPM (as the
    released checkpoints)."""
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    transformer = HunyuanDiT2DModel(
        sample_size=LATENT, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        in_channels=4, cross_attention_dim=TEXT_WIDTH, cross_attention_dim_t5=TEXT_WIDTH,
        pooled_projection_dim=16, hidden_size=24, activation_fn="gelu-approximate")
    bert = tiny_bert_tokenizer()
    torch.manual_seed(0)
    text_encoder = BertModel(BertConfig(vocab_size=len(bert), hidden_size=TEXT_WIDTH, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=37,
                                        max_position_embeddings=77)).eval()
    t5 = tiny_t5_tokenizer()  # the pipeline pads T5 text to 256 tokens (text_len_t5)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03,
                              prediction_type="v_prediction", steps_offset=1, clip_sample=False)
    return HunyuanDiTPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=bert,
                              transformer=transformer, scheduler=scheduler, safety_checker=None,
                              feature_extractor=None, requires_safety_checker=False,
                              text_encoder_2=tiny_t5_encoder(t5), tokenizer_2=t5)


def _tiny_cond_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=8, **extra)


def tiny_lcm():
    """LatentConsistencyModelPipeline: a UNet with a guidance embedding (time_cond_proj_dim),
    LCMScheduler, 4 steps by default."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    tokenizer = tiny_clip_tokenizer()
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             set_alpha_to_one=False)
    return LatentConsistencyModelPipeline(
        vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(tokenizer), tokenizer=tokenizer,
        unet=_tiny_cond_unet(time_cond_proj_dim=32), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def tiny_ddpm():
    """DDPMPipeline (google/ddpm-cifar10-32's layout): UNet2DModel on pixels, no text, no classes."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=2 * LATENT, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=8)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def tiny_img2img():
    """StableDiffusionImg2ImgPipeline: the tiny SD components; needs a source image per prompt."""
    from diffusers import StableDiffusionImg2ImgPipeline

    sd = tiny_sd()
    return StableDiffusionImg2ImgPipeline(**{k: v for k, v in sd.components.items()},
                                          requires_safety_checker=False)


def tiny_controlnet():
    """StableDiffusionControlNetPipeline: the tiny SD components + a ControlNetModel whose
    conditioning embedding downsamples by 2 (the VAE's factor); needs a control image."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = tiny_sd()
    torch.manual_seed(1)
    controlnet = ControlNetModel(
        block_out_channels=(16, 32), layers_per_block=1, in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=8, conditioning_embedding_out_channels=(8, 16))
    return StableDiffusionControlNetPipeline(**{k: v for k, v in sd.components.items()},
                                             controlnet=controlnet, requires_safety_checker=False)


_BUILDERS: dict[str, Callable] = {
    "sd": tiny_sd, "sdxl": tiny_sdxl, "pixart-alpha": lambda: tiny_pixart(sigma=False),
    "pixart-sigma": lambda: tiny_pixart(sigma=True), "dit": tiny_dit,
    "flux": tiny_flux, "sana": tiny_sana, "sd3": tiny_sd3, "hunyuan": tiny_hunyuan, "lcm": tiny_lcm,
    "ddpm": tiny_ddpm, "img2img": tiny_img2img, "controlnet": tiny_controlnet,
}


def tiny_pipeline(kind: str):
    """The in-memory pipeline of `kind` (random weights, seeded: the same every call)."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r} (known: {', '.join(KINDS + FAMILY_KINDS)})")
    pipe = _BUILDERS[kind]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(kind: str, out_dir: str | Path) -> Path:
    """Save the tiny pipeline of `kind` into `out_dir` (created); returns `out_dir` as a Path.

    Loads with `DiffusionPipeline.from_pretrained(out_dir, local_files_only=True)`. Raises
    ValueError for an unknown kind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiny_pipeline(kind).save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def call_kwargs(kind: str) -> dict:
    """Extra `pipe(...)` arguments the tiny pipelines need (PixArt: no resolution binning)."""
    return {"use_resolution_binning": False} if kind.startswith("pixart") else {}


# --- pytest fixtures ----------------------------------------------------------------------------
def _session_dir(tmp_path_factory, kind: str) -> Path:
    # one directory per kind under the session's base temp dir, shared by both fixtures
    path = tmp_path_factory.getbasetemp() / f"tiny-pipeline-{kind}"
    if not (path / "model_index.json").is_file():
        build_tiny_pipeline(kind, path)
    return path


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> Callable[[str], Path]:
    """`tiny_pipelines(kind) -> Path`: the saved pipeline dir of `kind`, built once per session.

    Treat the directory as read-only (tests share it); copy it before writing into it.
    """
    return lambda kind: _session_dir(tmp_path_factory, kind)


def tiny_pipeline_fixture(kind: str):
    """A session-scoped fixture giving the saved pipeline dir of `kind` (the same directory as
    `tiny_pipelines(kind)`), e.g. in a conftest: `tiny_sd_dir = tiny_pipeline_fixture("sd")`."""

    @pytest.fixture(scope="session")
    def _fixture(tmp_path_factory) -> Path:
        return _session_dir(tmp_path_factory, kind)

    return _fixture
