//! Hugging Face checkpoints in and out: `config.json` plus `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`) through burn-store's `SafetensorsStore`, and our own
//! checkpoints written in the same layout, so Python can read them back.
//!
//! Linear weights are transposed between PyTorch's `[out, in]` and burn's `[in, out]`;
//! LayerNorm `weight`/`bias` become burn's `gamma`/`beta`; older key prefixes
//! (`language_model.model.`, `vision_tower.vision_model.`) are renamed to transformers 5.x's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, BurnToPyTorchAdapter, ChainAdapter, KeyRemapper, ModuleAdapter, ModuleContext,
    ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::{Device, Shape, TensorData};

use crate::config::Gemma3Config;
use crate::error::ModelError;
use crate::precision::ModelDtype;
use crate::vlm::Gemma3ForConditionalGeneration;

/// Keys a Gemma 3 checkpoint may hold that this model does not use.
const UNUSED_PREFIXES: [&str; 1] = ["model.vision_tower.head."];

/// Transposes the weight of our [`LoraLinear`](crate::layers::LoraLinear) layers, which burn's
/// own PyTorch adapter only does for `burn::nn::Linear`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraLinearLayout;

impl ModuleAdapter for LoraLinearLayout {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        let is_weight = tensor.name.rsplit('.').next() == Some("weight");
        if ctx.module_type() != Some("Struct:LoraLinear") || !is_weight || tensor.shape.len() != 2 {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let shape = Shape::from([tensor.shape[1], tensor.shape[0]]);
        bridge::map_data(tensor, name, dtype, shape, transpose)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}

fn transpose(data: TensorData) -> TensorData {
    let shape = data.shape().clone();
    let (rows, cols) = (shape[0], shape[1]);
    let size = data.dtype().size();
    let bytes = data.as_bytes();
    let mut out = vec![0u8; bytes.len()];
    for i in 0..rows {
        for j in 0..cols {
            let src = (i * cols + j) * size;
            let dst = (j * rows + i) * size;
            out[dst..dst + size].copy_from_slice(&bytes[src..src + size]);
        }
    }
    TensorData::from_bytes_vec(out, vec![cols, rows], data.dtype())
}

/// Renames every key layout transformers has written for Gemma 3 to ours.
pub fn key_remapper() -> KeyRemapper {
    let patterns = [
        (r"^language_model\.model\.", "model.language_model."),
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^vision_tower\.", "model.vision_tower."),
        (r"^multi_modal_projector\.", "model.multi_modal_projector."),
        (
            r"^model\.vision_tower\.vision_model\.",
            "model.vision_tower.",
        ),
    ];
    KeyRemapper::from_patterns(patterns.to_vec()).expect("the patterns are valid regexes")
}

/// The safetensors files of a checkpoint folder: `model.safetensors`, or the shards named in
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| ModelError::Checkpoint {
        path: dir.display().to_string(),
        message: "holds neither model.safetensors nor model.safetensors.index.json".into(),
    })?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
            path: index.display().to_string(),
            message: e.to_string(),
        })?;
    let map = parsed
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Checkpoint {
            path: index.display().to_string(),
            message: "has no `weight_map` object".into(),
        })?;
    let mut shards = BTreeSet::new();
    for (key, value) in map {
        let shard = value.as_str().ok_or_else(|| ModelError::Checkpoint {
            path: index.display().to_string(),
            message: format!("`weight_map` entry `{key}` is not a file name"),
        })?;
        // The index may only name files beside it: a shard `../../etc/passwd` is refused.
        if !chex_data::is_plain_file_name(shard) {
            return Err(ModelError::Checkpoint {
                path: index.display().to_string(),
                message: format!(
                    "`weight_map` entry `{key}` names `{shard}`, which is not a file in this folder"
                ),
            });
        }
        shards.insert(shard);
    }
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Load a Hugging Face checkpoint folder (`config.json` and safetensors weights) in f32.
pub fn from_pretrained(
    dir: &Path,
    device: &Device,
) -> Result<Gemma3ForConditionalGeneration, ModelError> {
    from_pretrained_in(dir, ModelDtype::F32, device)
}

/// [`from_pretrained`] with the matrix-product weights in `dtype` (see [`crate::precision`]).
/// A bf16 checkpoint loaded in bf16 is never widened to f32 on the way, beyond its norms and
/// biases.
pub fn from_pretrained_in(
    dir: &Path,
    dtype: ModelDtype,
    device: &Device,
) -> Result<Gemma3ForConditionalGeneration, ModelError> {
    let config = Gemma3Config::from_file(&dir.join("config.json"))?;
    let mut model = Gemma3ForConditionalGeneration::new(&config, device);
    load_weights(&mut model, &weight_files(dir)?)?;
    Ok(model.with_dtype(dtype))
}

/// Fill `model` from safetensors files. Every parameter must be found exactly once with the
/// expected shape; keys the model does not have are refused unless known to be unused.
pub fn load_weights(
    model: &mut Gemma3ForConditionalGeneration,
    files: &[PathBuf],
) -> Result<(), ModelError> {
    let expected: BTreeSet<String> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| t.name)
        .filter(|name| !name.contains(".lora."))
        .collect();
    let mut applied = BTreeSet::new();
    for file in files {
        let path = file.display().to_string();
        let mut store = SafetensorsStore::from_file(file)
            .remap(key_remapper())
            .with_from_adapter(ChainAdapter::new(PyTorchToBurnAdapter, LoraLinearLayout))
            .allow_partial(true)
            .validate(false);
        let result = model
            .load_from(&mut store)
            .map_err(|e| ModelError::Checkpoint {
                path: path.clone(),
                message: format!("cannot be read as safetensors ({e}); is the file truncated?"),
            })?;
        if let Some(error) = result.errors.first() {
            return Err(match error {
                ApplyError::ShapeMismatch {
                    path: key,
                    expected,
                    found,
                } => ModelError::TensorShape {
                    path,
                    key: key.clone(),
                    expected: expected.to_vec(),
                    found: found.to_vec(),
                },
                other => ModelError::Checkpoint {
                    path,
                    message: other.to_string(),
                },
            });
        }
        let tied = model.config.text_config.tie_word_embeddings;
        if let Some(unused) = result.unused.iter().find(|k| {
            let known = UNUSED_PREFIXES.iter().any(|p| k.starts_with(p));
            let tied_head = tied && k.as_str() == "lm_head.weight";
            !(known || tied_head)
        }) {
            return Err(ModelError::Checkpoint {
                path,
                message: format!(
                    "tensor `{unused}` does not belong to this model (check config.json)"
                ),
            });
        }
        applied.extend(result.applied);
    }
    if let Some(missing) = expected.difference(&applied).next() {
        let listing = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ModelError::MissingTensor {
            path: listing,
            key: missing.clone(),
        });
    }
    Ok(())
}

/// Write `config.json` and `model.safetensors` in the Hugging Face layout (LoRA adapters are
/// saved separately, see [`crate::lora`]). The weights file is written to a temporary file and
/// renamed, so an interrupted save never leaves a truncated checkpoint behind.
pub fn save_pretrained(
    model: &Gemma3ForConditionalGeneration,
    dir: &Path,
) -> Result<(), ModelError> {
    create_dir(dir)?;
    let weights = dir.join("model.safetensors");
    let mut store = SafetensorsStore::from_file(&weights)
        .with_predicate(|path, _| !path.contains(".lora."))
        .with_to_adapter(ChainAdapter::new(BurnToPyTorchAdapter, LoraLinearLayout))
        .metadata("format", "pt")
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::Checkpoint {
            path: weights.display().to_string(),
            message: e.to_string(),
        })?;
    write_atomic(&dir.join("config.json"), model.config.to_json().as_bytes())
}

/// Create a folder and its parents.
pub fn create_dir(dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The workspace's [`chex_data::write_atomic`], with the path named in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    chex_data::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
