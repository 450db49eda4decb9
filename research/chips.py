"""The accelerators `research.cost` prices: on-demand price and default MFU per chip, with sources.

Each `Chip` names the `device_kind` jax reports for it (the key into `research.perf.PEAK_FLOPS`,
where its dense bf16 peak comes from), its on-demand price per chip-hour with the pricing page and
when the figure was read, and the MFU the estimate assumes by default:
  measured_mfu   what `python -m research.bench` measured for our BERT-base step on that chip,
                 with where it was measured (`measured_source`); None while nobody has: fill it
                 in from a bench row's `mfu` (and say which run) when one exists
  typical_mfu    otherwise, a published MFU for that chip class (`mfu_source`). These are
                 large-model figures (billions of parameters, tuned meshes): a 110M-parameter
                 encoder's smaller matrix multiplies usually reach less, so read the estimates as
                 a lower bound on time and cost, or pass --mfu.
Prices were not re-read when this table was written (no web access): each `price_as_of` says
when the figure is from. On-demand prices change and differ by region: check
the pricing pages before asking for the chips, and edit this table.

`hbm_bytes` and `hbm_bytes_per_s` (memory per chip and its bandwidth, with `hbm_source`) are what
`research.aot` compares a compiled step's per-device memory with and divides its bytes by (the
roofline). TPU HBM is counted in GiB (2**30 bytes): XLA's TPU compiler reports 15.75 GiB usable
of a v5e's 16, the rest reserved; bandwidths are the datasheets' decimal bytes per second.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  device_kind: str  # as `jax.devices()[0].device_kind` reports it
  usd_per_hour: float  # on-demand, per chip (GPU: per GPU, its VM's share included)
  price_source: str
  price_as_of: str
  typical_mfu: float
  mfu_source: str
  hbm_bytes: int  # memory per chip
  hbm_bytes_per_s: float  # its peak bandwidth
  hbm_source: str
  measured_mfu: float | None = None  # research.bench on this chip (None: not measured yet)
  measured_source: str = ""

  @property
  def default_mfu(self) -> tuple:
    """(mfu, where it comes from): the measured one where known, else the typical one."""
    if self.measured_mfu is not None:
      return self.measured_mfu, f"measured: {self.measured_source}"
    return self.typical_mfu, f"typical: {self.mfu_source}"


_GCP_TPU = "Google Cloud TPU pricing page (cloud.google.com/tpu/pricing), on-demand"
_GCP_GPU = "Google Cloud Compute Engine GPU/VM pricing page (cloud.google.com/compute/gpus-pricing)"
_PALM = "PaLM (Chowdhery et al. 2022), Table 3"
_MAXTEXT_V5E = "MaxText MaxText/configs/v5e/README.md: 16B model, 1x v5e-256, 61.10% MFU"
_TPU_DOCS = "Google Cloud TPU docs, system architecture page (cloud.google.com/tpu/docs/{})"
GIB = 2**30

CHIPS = (
    Chip("TPU v4", "TPU v4", 3.22, f"{_GCP_TPU}, us-central2, per chip-hour",
         "2024 (recalled, not re-read)", 0.462, f"{_PALM}: PaLM 540B on 6144 TPU v4 chips, 46.2%",
         32 * GIB, 1228e9, _TPU_DOCS.format("v4") + ": 32 GiB HBM2, 1228 GB/s (recalled)"),
    Chip("TPU v5e", "TPU v5 lite", 1.20, f"{_GCP_TPU}, us-central1/us-west4, per chip-hour",
         "2024 (recalled, not re-read)", 0.611, _MAXTEXT_V5E,
         16 * GIB, 819e9, _TPU_DOCS.format("v5e") + ": 'HBM2 capacity and bandwidth: 16 GB, "
         "819 GBps' (read 2026-11); XLA's TPU compiler: 15.75 GiB available"),
    Chip("TPU v5p", "TPU v5", 4.20, f"{_GCP_TPU}, us-east5, per chip-hour",
         "2024 (recalled, not re-read)", 0.7147,
         "MaxText README 'Runtime Performance Results': 32B model on v5p-128, 71.47% MFU",
         95 * GIB, 2765e9, _TPU_DOCS.format("v5p") + ": 95 GiB HBM2e, 2765 GB/s (recalled)"),
    Chip("TPU v6e", "TPU v6 lite", 2.70, f"{_GCP_TPU}, us-east1, per chip-hour",
         "early 2025 (recalled, not re-read)", 0.611,
         "no published v6e MFU cited here: the v5e figure (same single-core 'lite' chip "
         f"family) stands in; {_MAXTEXT_V5E}",
         32 * GIB, 1640e9, _TPU_DOCS.format("v6e") + ": 32 GB HBM, 1640 GB/s (recalled)"),
    Chip("A100", "NVIDIA A100-SXM4-40GB", 3.67,
         f"{_GCP_GPU}: a2-highgpu-1g (1x A100 40GB, 12 vCPU, 85 GB), us-central1, per hour",
         "2024 (recalled, not re-read)", 0.302,
         f"{_PALM}: Megatron-Turing NLG 530B on 2240 A100s, 30.2%",
         40 * 10**9, 1555e9, "NVIDIA A100 datasheet: 40 GB HBM2, 1,555 GB/s (recalled)"),
    Chip("H100", "NVIDIA H100 80GB HBM3", 11.06,
         f"{_GCP_GPU}: a3-highgpu-8g (8x H100 80GB) at about $88.5 per hour / 8, us-central1",
         "2024 (recalled, not re-read)", 0.43,
         "The Llama 3 Herd of Models (Dubey et al. 2024), Table 4: 405B on 8192 H100s, 43% BF16 "
         "MFU (38-43% across its runs)",
         80 * 10**9, 3.35e12, "NVIDIA H100 datasheet (SXM): 80 GB HBM3, 3.35 TB/s (recalled)"),
)


def of_device_kind(device_kind: str) -> Chip | None:
  """The table's chip of a `device_kind` as jax reports it (e.g. 'TPU v5 lite'), else None."""
  return next((chip for chip in CHIPS if chip.device_kind == device_kind), None)
