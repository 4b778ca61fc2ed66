//! One loader per dataset format; each returns a [`crate::Dataset`].

mod chexpert;
mod generic;
mod mimic;
mod nih;
mod table;

pub use chexpert::{CHEXPERT_META_COLUMNS, chexpert_image_root, load_chexpert};
pub use generic::{GenericCsvSpec, load_generic_csv};
pub use mimic::{MIMIC_LABEL_FILE, MIMIC_METADATA_FILE, MIMIC_SPLIT_FILE, load_mimic};
pub use nih::{NIH_LABEL_FILE, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST, load_nih};
