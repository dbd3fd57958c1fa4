"""The ground floor every package stands on, with no quantization in it: the one error type
(`errors`), params.yaml sections read into checked dataclasses (`params`), JSON I/O and the one
atomic write (`jsonio`, `atomicdir`), progress bars that stay quiet in logs (`progress`), code and
file digests / job keys (`provenance`) and where a model's data products live (`layout`).

It imports no other qsens package, so every package may import it."""
