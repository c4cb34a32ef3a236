"""Your own two-speaker recordings with VA lists (see data_builders/README.md)."""

from data_builders.dialog_folder.dialog_folder_dataset_builder import (
    DialogFolder, DialogFolderConfig)
