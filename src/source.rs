//! Where a dataset comes from, as the command line and configs name it; one place that
//! dispatches to the right loader.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, GenericCsvSpec, LoadOptions};

/// A dataset on disk in one of the supported formats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum DataSource {
    /// A CheXpert `train.csv` / `valid.csv`.
    Chexpert { csv: PathBuf },
    /// A MIMIC-CXR-JPG root folder.
    Mimic { root: PathBuf },
    /// An NIH ChestX-ray14 root folder.
    Nih { root: PathBuf },
    /// A generic CSV with the given column roles.
    Csv { csv: PathBuf, spec: GenericCsvSpec },
}

impl DataSource {
    /// Loads the dataset with the given options.
    pub fn load(&self, options: &LoadOptions) -> Result<Dataset, crate::data::DataError> {
        match self {
            Self::Chexpert { csv } => crate::data::load_chexpert(csv, options),
            Self::Mimic { root } => crate::data::load_mimic(root, options),
            Self::Nih { root } => crate::data::load_nih(root, options),
            Self::Csv { csv, spec } => crate::data::load_generic_csv(csv, spec, options),
        }
    }

    /// The file-system paths this source names (to move them together).
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            Self::Chexpert { csv } => vec![csv],
            Self::Mimic { root } | Self::Nih { root } => vec![root],
            Self::Csv { csv, spec } => {
                let mut paths = vec![csv];
                paths.extend(spec.image_root.as_mut());
                paths
            }
        }
    }
}
