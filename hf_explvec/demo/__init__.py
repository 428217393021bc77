"""The offline end-to-end demo (`hf-explvec demo`): image domains, a base stage, twins, transfer, report.

- `config`: [`DemoConfig`], [`quick_config`] and the derived seeds;
- `domains` (with `domain_images` and `plots`): the offline image domains;
- `data`: domains as processed splits ([`DemoSplit`], [`Domain`], [`load_domains`]);
- `pretrain`: the CLIP model and the base stage ([`pretrain_clip`]);
- `pipeline`: the stages and [`run`];
- `report`: `report.md` and `results.json`; `plots`: the figures; `diagnostics`: the diagnostic section;
- `seeds`: the demo over several seeds ([`run_seeds`]) and its aggregate report.
"""

from .config import DEFAULT_TARGETS, SEED_OFFSETS, SEEDS_TARGETS, DemoConfig, quick_config
from .data import DemoSplit, Domain, Domains, load_domain, load_domains
from .pipeline import run
from .pretrain import build_clip, pretrain_clip, start_model
from .seeds import aggregate_runs, run_seeds

__all__ = [
    "DEFAULT_TARGETS",
    "SEEDS_TARGETS",
    "SEED_OFFSETS",
    "aggregate_runs",
    "DemoConfig",
    "DemoSplit",
    "Domain",
    "Domains",
    "build_clip",
    "load_domain",
    "load_domains",
    "pretrain_clip",
    "quick_config",
    "run",
    "run_seeds",
    "start_model",
]
