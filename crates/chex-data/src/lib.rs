//! Chest X-ray data for chex-grpo: loaders for CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14 and
//! a generic CSV, read in the datasets' own formats; label spaces and the CheXpert ↔ NIH
//! mapping; uncertainty policies and view filters; patient-level splits and ChexReason's
//! balanced sampler; image decoding with a cache; and the synthetic two-site benchmark.
//!
//! ```no_run
//! use chex_data::{load_nih, LoadOptions, NihToChexpert, UncertaintyPolicy};
//!
//! let nih = load_nih("../shared/data/nih1000".as_ref(), &LoadOptions::default())?;
//! println!("{}", nih.report.summary());
//! let as_chexpert = nih.nih_to_chexpert(&NihToChexpert::default())?;
//! let counts = as_chexpert.positive_counts(UncertaintyPolicy::PositiveOnly);
//! # Ok::<(), chex_data::DataError>(())
//! ```

pub mod dataset;
pub mod error;
pub mod fs;
pub mod image;
pub mod labels;
pub mod loaders;
pub mod paths;
pub mod sampler;
pub mod split;
pub mod synth;

pub use dataset::{
    Dataset, LoadOptions, LoadReport, Observation, OfficialSplit, OnError, Projection, Sample,
    UncertaintyPolicy, View, ViewFilter,
};
pub use error::DataError;
pub use fs::write_atomic;
pub use image::{ImageCache, ImageSpec, PreparedImage, decode_grey, prepare_image};
pub use labels::{
    CHEXPERT_LABELS, CHEXREASON_NIH_EVAL_LABELS, LabelSpace, MappingKind, NIH_LABELS,
    NIH_TO_CHEXPERT_TABLE, NihToChexpert,
};
pub use loaders::{GenericCsvSpec, load_chexpert, load_generic_csv, load_mimic, load_nih};
pub use paths::{is_plain_file_name, join_inside};
pub use sampler::{BalancedSamplerConfig, Draw, balanced_draws};
pub use split::patient_split;
pub use synth::{SynthConfig, SynthSummary, write_synthetic_sites};
