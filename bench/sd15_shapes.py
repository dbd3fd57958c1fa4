"""The 40 distinct weight shapes (C_out, C_in, *kernel) of SD v1.5 UNet quantizable layers.

Used by benchmarks that need SD-sized work without weights. Read off diffusers'
UNet2DConditionModel with the SD v1.5 config (block_out_channels 320/640/1280/1280,
cross_attention_dim 768, 1x1-conv proj_in/proj_out); checked against
denoisers/configs/sd15.json built on the meta device.
"""
SD15_SHAPES: list[tuple[int, ...]] = [
    (320, 4, 3, 3), (1280, 320), (1280, 1280), (320, 320, 3, 3), (320, 1280), (320, 320, 1, 1),
    (320, 320), (320, 768), (2560, 320), (640, 320, 3, 3), (640, 640, 3, 3),
    (640, 320, 1, 1), (640, 1280), (640, 640, 1, 1), (640, 640), (640, 768), (5120, 640),
    (640, 2560), (1280, 640, 3, 3), (1280, 1280, 3, 3), (1280, 640, 1, 1), (1280, 1280, 1, 1),
    (1280, 768), (10240, 1280), (1280, 5120), (1280, 2560, 3, 3), (1280, 2560, 1, 1),
    (1280, 1920, 3, 3), (1280, 1920, 1, 1), (640, 1920, 3, 3), (640, 1920, 1, 1),
    (640, 1280, 3, 3), (640, 1280, 1, 1), (640, 960, 3, 3), (640, 960, 1, 1), (320, 960, 3, 3),
    (320, 960, 1, 1), (320, 640, 3, 3), (320, 640, 1, 1), (4, 320, 3, 3),
]
