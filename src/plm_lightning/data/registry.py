"""Dataset names, as used by ``data.name`` and ``plm-data``."""

from plm_lightning.data.cars196 import Cars196Dataset
from plm_lightning.data.cub import CUBDataset
from plm_lightning.data.digits import DigitsDataset
from plm_lightning.data.folder import ImageFolderDataset
from plm_lightning.data.glyphs import GlyphsDataset
from plm_lightning.data.inshop import InShopDataset
from plm_lightning.data.sop import SOPDataset
from plm_lightning.data.synthetic import SyntheticManifoldsDataset

DATASETS = {
    cls.name: cls
    for cls in (
        DigitsDataset,
        ImageFolderDataset,
        SyntheticManifoldsDataset,
        GlyphsDataset,
        CUBDataset,
        Cars196Dataset,
        SOPDataset,
        InShopDataset,
    )
}
# The public benchmarks, with official metadata, counts and plm-data support.
BENCHMARKS = ("cub", "cars196", "sop", "inshop")
