//! Choosing the burn backend at run time from a string such as `cpu` or `cuda:0`. Backends are
//! cargo features; asking for one that was not compiled in is an error that names the feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::ModelError;

/// A backend and device index, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's Flex CPU backend (`cpu`; the default).
    Cpu,
    /// burn's NdArray CPU backend (`ndarray`).
    NdArray,
    /// LibTorch on the CPU (`tch-cpu`).
    TchCpu,
    /// LibTorch on a CUDA GPU (`tch-cuda:N`).
    TchCuda(usize),
    /// burn-cuda (CubeCL) on a CUDA GPU (`cuda:N`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((name, index)) => {
                let index = index
                    .parse::<usize>()
                    .map_err(|_| ModelError::UnknownDevice(s.to_string()))?;
                (name, Some(index))
            }
            None => (lower.as_str(), None),
        };
        match (name, index) {
            ("cpu" | "flex", None) => Ok(Self::Cpu),
            ("ndarray", None) => Ok(Self::NdArray),
            ("tch-cpu", None) => Ok(Self::TchCpu),
            ("tch-cuda", i) => Ok(Self::TchCuda(i.unwrap_or(0))),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            _ => Err(ModelError::UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::NdArray => write!(f, "ndarray"),
            Self::TchCpu => write!(f, "tch-cpu"),
            Self::TchCuda(i) => write!(f, "tch-cuda:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The cargo features of the backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    [
        (cfg!(feature = "flex"), "flex"),
        (cfg!(feature = "ndarray"), "ndarray"),
        (cfg!(feature = "tch"), "tch"),
        (cfg!(feature = "cuda"), "cuda"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

impl DeviceChoice {
    /// The cargo feature this backend needs.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Cpu => "flex",
            Self::NdArray => "ndarray",
            Self::TchCpu | Self::TchCuda(_) => "tch",
            Self::Cuda(_) => "cuda",
        }
    }

    /// The burn device, or an error naming the missing cargo feature.
    #[allow(unreachable_code, unused_variables)]
    pub fn device(&self) -> Result<Device, ModelError> {
        match *self {
            Self::Cpu => {
                #[cfg(feature = "flex")]
                return Ok(Device::flex());
            }
            Self::NdArray => {
                #[cfg(feature = "ndarray")]
                #[allow(deprecated)]
                return Ok(Device::ndarray());
            }
            Self::TchCpu => {
                #[cfg(feature = "tch")]
                #[allow(deprecated)]
                return Ok(Device::libtorch());
            }
            Self::TchCuda(index) => {
                #[cfg(feature = "tch")]
                #[allow(deprecated)]
                return Ok(Device::libtorch_cuda(index));
            }
            Self::Cuda(index) => {
                #[cfg(feature = "cuda")]
                return Ok(Device::cuda(index));
            }
        }
        Err(ModelError::BackendNotCompiled {
            requested: self.to_string(),
            feature: self.feature(),
            compiled: compiled_backends().join(", "),
        })
    }
}

/// Whether `device` is a GPU (or another accelerator) rather than a CPU backend.
pub fn is_accelerator(device: &Device) -> bool {
    // burn names the backend in a device's debug form; every CPU backend is listed here.
    let name = format!("{device:?}");
    !["Flex", "NdArray", "LibTorch(Cpu)"]
        .iter()
        .any(|cpu| name.contains(cpu))
}

/// Parses a device string and returns the burn device.
pub fn select_device(spec: &str) -> Result<Device, ModelError> {
    spec.parse::<DeviceChoice>()?.device()
}

/// The variable that lists the devices numerical tests run on, comma-separated
/// (`CHEX_TEST_DEVICES=cpu,tch-cpu`, or `tch-cuda:0` on a GPU machine).
pub const TEST_DEVICES_VAR: &str = "CHEX_TEST_DEVICES";

/// The devices numerical tests run on: those listed in [`TEST_DEVICES_VAR`], else every CPU
/// backend compiled into this build (`cpu`, `ndarray`, `tch-cpu`).
///
/// A backend that no test runs on goes wrong unnoticed (libtorch once trained to garbage while
/// every flex test passed), so a listed backend that is not compiled is an error rather than a
/// silent skip.
pub fn test_devices() -> Result<Vec<(DeviceChoice, Device)>, ModelError> {
    let choices: Vec<DeviceChoice> = match std::env::var(TEST_DEVICES_VAR) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?,
        _ => [
            DeviceChoice::Cpu,
            DeviceChoice::NdArray,
            DeviceChoice::TchCpu,
        ]
        .into_iter()
        .filter(|c| compiled_backends().contains(&c.feature()))
        .collect(),
    };
    choices
        .into_iter()
        .map(|choice| Ok((choice, choice.device()?)))
        .collect()
}

/// Runs `check` on every device of [`test_devices`], in turn. A failure is reported with the
/// backend it happened on, then propagated, so a test names the backend that broke.
pub fn on_every_test_device(check: impl Fn(DeviceChoice, &Device)) {
    let devices = test_devices().unwrap_or_else(|e| panic!("{TEST_DEVICES_VAR}: {e}"));
    for (choice, device) in devices {
        eprintln!("-- on backend {choice}");
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(choice, &device)));
        if let Err(panic) = outcome {
            eprintln!("-- FAILED on backend {choice}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    #[test]
    fn no_cpu_backend_counts_as_an_accelerator() {
        for (choice, device) in test_devices().unwrap() {
            if matches!(choice, DeviceChoice::TchCuda(_) | DeviceChoice::Cuda(_)) {
                assert!(is_accelerator(&device), "{choice}: {device:?}");
            } else {
                assert!(!is_accelerator(&device), "{choice}: {device:?}");
                assert!(!is_accelerator(&device.clone().autodiff()), "{choice}");
            }
        }
    }

    #[test]
    fn parses_every_spelling() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "ndarray".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::NdArray
        );
        assert_eq!(
            "tch-cpu".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::TchCpu
        );
        assert_eq!(
            "tch-cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::TchCuda(1)
        );
        assert_eq!(
            "CUDA:0".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("metal".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn compiled_backends_compute_and_missing_ones_name_their_feature() {
        for choice in [
            DeviceChoice::Cpu,
            DeviceChoice::NdArray,
            DeviceChoice::TchCpu,
            DeviceChoice::Cuda(0),
        ] {
            let compiled = compiled_backends().contains(&choice.feature());
            match choice.device() {
                Ok(device) => {
                    assert!(compiled);
                    // A real matmul on the chosen backend, then autodiff through it.
                    let device = device.autodiff();
                    let x =
                        Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device).require_grad();
                    let y = x.clone().matmul(x.clone()).sum();
                    let value = y.clone().into_scalar::<f32>();
                    assert_eq!(value, 54.0);
                    let grads = y.backward();
                    assert!(x.grad(&grads).is_some());
                }
                Err(e) => {
                    assert!(!compiled, "{choice} is compiled but failed: {e}");
                    let message = e.to_string();
                    assert!(
                        message.contains(&format!("--features {}", choice.feature())),
                        "{message}"
                    );
                }
            }
        }
    }
}
