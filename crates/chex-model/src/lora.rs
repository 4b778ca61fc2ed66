//! LoRA: attach low-rank adapters to chosen projections, train only them, save them on their own
//! in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`), load adapters PEFT
//! wrote, and merge them into the base weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::DropoutConfig;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{create_dir, write_atomic};
use crate::error::ModelError;
use crate::layers::{LoraLinear, LoraShape, LoraWeights};
use crate::vlm::Gemma3ForConditionalGeneration;

/// The projections LoRA may target, by their checkpoint names.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which layers get adapters and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// Scaling numerator (`alpha / r`).
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    pub dropout: f64,
    /// Module names to adapt (`q_proj`, …, `down_proj`).
    pub target_modules: Vec<String>,
    /// Also adapt the vision tower's matching projections (ChexReason kept it frozen).
    pub include_vision: bool,
}

impl LoraConfig {
    /// ChexReason's SFT adapters: r 16, α 32, dropout 0.1 on every attention and MLP projection.
    pub fn chexreason() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.1,
            target_modules: TARGETS.iter().map(|s| s.to_string()).collect(),
            include_vision: false,
        }
    }

    fn shape(&self) -> LoraShape {
        LoraShape {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
        }
    }

    fn targets(&self, path: &str) -> bool {
        let name = path.rsplit('.').next().unwrap_or(path);
        let in_scope = self.include_vision || path.starts_with("model.language_model.");
        in_scope && self.target_modules.iter().any(|t| t == name)
    }
}

/// Visit every linear layer that LoRA could adapt, with its checkpoint path.
pub fn for_each_linear(
    model: &mut Gemma3ForConditionalGeneration,
    f: &mut dyn FnMut(&str, &mut LoraLinear) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    for (i, layer) in model.model.language_model.layers.iter_mut().enumerate() {
        let base = format!("model.language_model.layers.{i}");
        let a = &mut layer.self_attn;
        for (name, linear) in [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut layer.mlp.gate_proj),
            ("mlp.up_proj", &mut layer.mlp.up_proj),
            ("mlp.down_proj", &mut layer.mlp.down_proj),
        ] {
            f(&format!("{base}.{name}"), linear)?;
        }
    }
    for (i, layer) in model
        .model
        .vision_tower
        .encoder
        .layers
        .iter_mut()
        .enumerate()
    {
        let base = format!("model.vision_tower.encoder.layers.{i}");
        let a = &mut layer.self_attn;
        for (name, linear) in [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.out_proj", &mut a.out_proj),
            ("mlp.fc1", &mut layer.mlp.fc1),
            ("mlp.fc2", &mut layer.mlp.fc2),
        ] {
            f(&format!("{base}.{name}"), linear)?;
        }
    }
    Ok(())
}

/// Freeze every base weight and attach fresh adapters to the targeted projections. Each
/// adapter's A is drawn from `seed` and its layer's path, on the host, so that a seed gives the
/// same adapters on every backend.
pub fn apply_lora(
    model: Gemma3ForConditionalGeneration,
    config: &LoraConfig,
    seed: u64,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    let mut model = model.freeze();
    let _ = for_each_linear(&mut model, &mut |path, linear| {
        if config.targets(path) {
            let taken = std::mem::replace(linear, placeholder(device));
            *linear = taken.attach_lora(config.shape(), layer_seed(seed, path), device);
        }
        Ok(())
    });
    model
}

/// A seed for one layer: FNV-1a of its path mixed into the run's seed.
fn layer_seed(seed: u64, path: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in path.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    seed.rotate_left(17) ^ hash
}

fn placeholder(device: &Device) -> LoraLinear {
    LoraLinear {
        weight: Param::from_tensor(Tensor::zeros([1, 1], device)),
        bias: None,
        lora: None,
    }
}

/// Fold every adapter into its base weight.
pub fn merge_lora(
    mut model: Gemma3ForConditionalGeneration,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    let _ = for_each_linear(&mut model, &mut |_, linear| {
        let taken = std::mem::replace(linear, placeholder(device));
        *linear = taken.merge_lora();
        Ok(())
    });
    model
}

/// Set every adapter's input-dropout probability (0 switches it off, as TRL's
/// `disable_dropout` does for GRPO, so that scoring the same completions twice gives the same
/// log-probabilities).
pub fn set_lora_dropout(
    mut model: Gemma3ForConditionalGeneration,
    probability: f64,
) -> Gemma3ForConditionalGeneration {
    let _ = for_each_linear(&mut model, &mut |_, linear| {
        if let Some(lora) = linear.lora.as_mut() {
            lora.dropout = DropoutConfig::new(probability).init();
        }
        Ok(())
    });
    model
}

/// Number of adapter parameters.
pub fn adapter_parameter_count(model: &Gemma3ForConditionalGeneration) -> usize {
    let mut model = model.clone();
    let mut count = 0;
    let _ = for_each_linear(&mut model, &mut |_, linear| {
        if let Some(l) = &linear.lora {
            count += l.a.val().dims().iter().product::<usize>()
                + l.b.val().dims().iter().product::<usize>();
        }
        Ok(())
    });
    count
}

/// PEFT's `adapter_config.json`, the fields we read and write.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

const PEFT_PREFIX: &str = "base_model.model.";

/// An adapter factor read from a file: values and shape.
type Factor = (Vec<f32>, Vec<usize>);

/// Write the adapters as PEFT does: `adapter_config.json` and `adapter_model.safetensors`.
pub fn save_adapter(
    model: &Gemma3ForConditionalGeneration,
    config: &LoraConfig,
    dir: &Path,
) -> Result<(), ModelError> {
    create_dir(dir)?;
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    let mut model = model.clone();
    for_each_linear(&mut model, &mut |path, linear| {
        if let Some(lora) = &linear.lora {
            // PEFT stores lora_A as [r, in] and lora_B as [out, r].
            for (name, factor) in [("lora_A", &lora.a), ("lora_B", &lora.b)] {
                let t = factor.val().transpose();
                let dims = t.dims().to_vec();
                let values = t
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| ModelError::Adapter {
                        path: path.to_string(),
                        message: format!("{e:?}"),
                    })?;
                tensors.push((format!("{PEFT_PREFIX}{path}.{name}.weight"), values, dims));
            }
        }
        Ok(())
    })?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, values, dims)| {
            let bytes: &[u8] = bytemuck::cast_slice(values);
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), bytes)
                    .expect("shape and byte length agree");
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| ModelError::Adapter {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
    let peft = PeftConfig {
        peft_type: "LORA".into(),
        r: config.rank,
        lora_alpha: config.alpha,
        lora_dropout: config.dropout,
        target_modules: serde_json::json!(config.target_modules),
        use_rslora: false,
        use_dora: false,
        bias: Some("none".into()),
        extra: BTreeMap::from([
            ("fan_in_fan_out".to_string(), serde_json::json!(false)),
            ("task_type".to_string(), serde_json::Value::Null),
            ("inference_mode".to_string(), serde_json::json!(true)),
        ]),
    };
    let json = serde_json::to_string_pretty(&peft).unwrap_or_default();
    write_atomic(&dir.join("adapter_config.json"), json.as_bytes())
}

/// Load a PEFT LoRA adapter folder onto `model` (base weights frozen, adapters trainable).
pub fn load_adapter(
    model: Gemma3ForConditionalGeneration,
    dir: &Path,
    device: &Device,
) -> Result<(Gemma3ForConditionalGeneration, LoraConfig), ModelError> {
    let config_path = dir.join("adapter_config.json");
    let err = |path: &Path, message: String| ModelError::Adapter {
        path: path.display().to_string(),
        message,
    };
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| err(&config_path, e.to_string()))?;
    let peft: PeftConfig =
        serde_json::from_str(&text).map_err(|e| err(&config_path, e.to_string()))?;
    if peft.peft_type != "LORA" || peft.use_dora || peft.use_rslora {
        return Err(err(
            &config_path,
            format!(
                "only plain LoRA is supported (peft_type {}, use_dora {}, use_rslora {})",
                peft.peft_type, peft.use_dora, peft.use_rslora
            ),
        ));
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| err(&weights_path, e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        err(
            &weights_path,
            format!("cannot be read as safetensors ({e}); is the file truncated?"),
        )
    })?;
    let read = |key: &str| -> Result<Option<Factor>, ModelError> {
        let view = match file.tensor(key) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let values = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            other => {
                return Err(err(
                    &weights_path,
                    format!("tensor `{key}` has unsupported dtype {other:?}"),
                ));
            }
        };
        Ok(Some((values, view.shape().to_vec())))
    };
    let shape = LoraShape {
        rank: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
    };
    let mut targets = std::collections::BTreeSet::new();
    let mut used = 0usize;
    let mut model = model.freeze();
    for_each_linear(&mut model, &mut |path, linear| {
        let key_a = format!("{PEFT_PREFIX}{path}.lora_A.weight");
        let key_b = format!("{PEFT_PREFIX}{path}.lora_B.weight");
        let (Some((a, a_shape)), Some((b, b_shape))) = (read(&key_a)?, read(&key_b)?) else {
            return Ok(());
        };
        let [d_in, d_out] = linear.dims();
        for (key, found, expected) in [
            (&key_a, &a_shape, vec![peft.r, d_in]),
            (&key_b, &b_shape, vec![d_out, peft.r]),
        ] {
            if *found != expected {
                return Err(ModelError::TensorShape {
                    path: weights_path.display().to_string(),
                    key: key.clone(),
                    expected,
                    found: found.clone(),
                });
            }
        }
        let a = Tensor::<2>::from_data(TensorData::new(a, [peft.r, d_in]), device).transpose();
        let b = Tensor::<2>::from_data(TensorData::new(b, [d_out, peft.r]), device).transpose();
        let taken = std::mem::replace(linear, placeholder(device));
        // Attaching freezes the base weights; the loaded A and B replace the drawn ones.
        let mut adapted = taken.attach_lora(shape, 0, device);
        adapted.lora = Some(LoraWeights {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: shape.alpha / shape.rank as f64,
            dropout: DropoutConfig::new(shape.dropout).init(),
        });
        *linear = adapted;
        targets.insert(path.rsplit('.').next().unwrap_or(path).to_string());
        used += 2;
        Ok(())
    })?;
    if used != file.len() {
        let known: Vec<String> = file.names().into_iter().map(|s| s.to_string()).collect();
        let mut probe = model.clone();
        let mut paths = Vec::new();
        let _ = for_each_linear(&mut probe, &mut |p, _| {
            paths.push(p.to_string());
            Ok(())
        });
        let stray = known
            .iter()
            .find(|k| {
                !paths
                    .iter()
                    .any(|p| k.starts_with(&format!("{PEFT_PREFIX}{p}.")))
            })
            .cloned()
            .unwrap_or_default();
        return Err(err(
            &weights_path,
            format!("tensor `{stray}` matches no layer of this model"),
        ));
    }
    let include_vision = file.names().iter().any(|n| n.contains("vision_tower"));
    let config = LoraConfig {
        rank: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        target_modules: targets.into_iter().collect(),
        include_vision,
    };
    Ok((model, config))
}
