"""Dataset names, as used by ``data.name``."""
from plm_lightning.data.digits import DigitsDataset
from plm_lightning.data.folder import ImageFolderDataset
from plm_lightning.data.synthetic import SyntheticManifoldsDataset

DATASETS = {cls.name: cls for cls in (DigitsDataset, ImageFolderDataset, SyntheticManifoldsDataset)}
