"""Dataset names, as used by ``data.name``."""
from plm_lightning.data.digits import DigitsDataset
from plm_lightning.data.folder import ImageFolderDataset

DATASETS = {cls.name: cls for cls in (DigitsDataset, ImageFolderDataset)}
