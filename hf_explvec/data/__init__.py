"""The data stage: load splits by name ([`load_split`]), label them with Kernel SHAP patch values
([`label_dataset`]), push them with a card ([`push_shap_dataset`]).

Modules: `load` (by name, to the Hub, provenance), `label` (the labelling entry point and its checks), `rows`
(per-example Kernel SHAP, the work split between processes), `shards` (the checksummed, resumable shard store),
`images` (images to pixels, label checks).
"""

from .label import *  # noqa: F403
from .label import __all__
