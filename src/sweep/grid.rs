//! The plan of a sweep: a base configuration, a grid of settings and the seeds, expanded into
//! one resolved study configuration per cell and seed, every one checked before any runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::study::StudyConfig;

/// One setting the grid varies: `data.synthetic.cue=0,0.9`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridAxis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for GridAxis {
    type Err = Error;

    /// `key=v1,v2,…` (values are read as `--set` values; none may contain a comma).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |m: &str| Error::setting("--grid", format!("`{text}`: {m}"));
        let (key, values) = text
            .split_once('=')
            .ok_or_else(|| bad("should look like `section.key=value1,value2`"))?;
        let key = key.trim().to_string();
        if key.is_empty() || key == "seed" || key == "out" {
            return Err(bad(
                "needs a setting other than `seed` and `out` (seeds come from --seeds, the \
                 folders from the sweep)",
            ));
        }
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(bad("has an empty value"));
        }
        let mut distinct = values.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != values.len() {
            return Err(bad("names a value twice"));
        }
        Ok(Self { key, values })
    }
}

/// What a sweep runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPlan {
    /// The study configuration every run starts from.
    pub config: PathBuf,
    /// `--set` values applied to every run, before the grid's.
    pub overrides: Vec<String>,
    /// The settings varied; the cells are every combination.
    pub grid: Vec<GridAxis>,
    pub seeds: Vec<u64>,
    /// The sweep's folder: one folder per cell, one per seed in it, and the shared sites.
    pub out: PathBuf,
}

/// One combination of grid values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// `data.synthetic.cue=0 pretrain.enabled=true`, or `base` for an empty grid.
    pub name: String,
    /// Its folder under the sweep's.
    pub folder: String,
    pub settings: Vec<(String, String)>,
}

/// One study of the sweep.
pub struct PlannedRun {
    /// Index into [`SweepPlan::cells`].
    pub cell: usize,
    pub seed: u64,
    pub config: StudyConfig,
}

/// A folder name from a cell's settings: the keys' last parts where those are distinct, and
/// nothing that needs quoting in a shell.
fn folder_name(settings: &[(String, String)], short_keys: bool) -> String {
    if settings.is_empty() {
        return "base".into();
    }
    settings
        .iter()
        .map(|(k, v)| {
            let key = if short_keys {
                k.rsplit('.').next().unwrap_or(k)
            } else {
                k
            };
            format!("{key}={v}")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("+")
}

impl SweepPlan {
    /// Every combination of the grid's values, the first axis varying slowest.
    pub fn cells(&self) -> Vec<Cell> {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for axis in &self.grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((axis.key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let mut leaves: Vec<&str> = self
            .grid
            .iter()
            .map(|a| a.key.rsplit('.').next().unwrap_or(&a.key))
            .collect();
        leaves.sort_unstable();
        let short = leaves.windows(2).all(|w| w[0] != w[1]);
        combos
            .into_iter()
            .map(|settings| Cell {
                name: if settings.is_empty() {
                    "base".into()
                } else {
                    settings
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                folder: folder_name(&settings, short),
                settings,
            })
            .collect()
    }

    /// Every run's resolved configuration, cells outer and seeds inner; an unknown key or an
    /// out-of-range value in any cell is refused here, before anything runs.
    pub fn runs(&self) -> Result<Vec<PlannedRun>> {
        if self.seeds.is_empty() {
            return Err(Error::setting("--seeds", "a sweep needs at least one seed"));
        }
        let mut seen = self.seeds.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.seeds.len() {
            return Err(Error::setting("--seeds", "a seed is listed twice"));
        }
        let mut keys: Vec<&str> = self.grid.iter().map(|a| a.key.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::setting("--grid", "a setting is varied twice"));
        }
        let mut runs = Vec::new();
        for (index, cell) in self.cells().iter().enumerate() {
            for &seed in &self.seeds {
                let mut overrides = self.overrides.clone();
                overrides.extend(cell.settings.iter().map(|(k, v)| format!("{k}={v}")));
                // Every random choice follows the run's seed: the study's (sites, draws,
                // initialisation, bootstrap) and each trainer's (shuffles, sampling, adapters).
                for key in ["seed", "sft.seed", "grpo.seed", "pretrain.training.seed"] {
                    overrides.push(format!("{key}={seed}"));
                }
                let mut config = StudyConfig::from_file(&self.config, &overrides)?;
                config.out = self.out.join(&cell.folder).join(format!("seed-{seed}"));
                if let Some(synthetic) = &config.data.synthetic {
                    let sites = synthetic.synth_config(seed)?;
                    config.move_synthetic(&self.sites_dir(&sites.fingerprint()));
                }
                runs.push(PlannedRun {
                    cell: index,
                    seed,
                    config,
                });
            }
        }
        Ok(runs)
    }

    /// Where the synthetic sites with `fingerprint` are written, shared by every run that
    /// draws them.
    pub fn sites_dir(&self, fingerprint: &str) -> PathBuf {
        self.out.join("sites").join(fingerprint)
    }

    /// The sweep's own record of what it runs (`sweep.json`).
    pub fn path(&self) -> PathBuf {
        self.out.join("sweep.json")
    }

    /// Read a plan written by [`SweepPlan::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Write `sweep.json`.
    pub fn save(&self) -> Result<()> {
        let path = self.path();
        let text = crate::error::to_json(self, &path, true)?;
        chex_data::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_and_cells_cover_the_product() {
        let plan = SweepPlan {
            config: "configs/tiny-cpu.toml".into(),
            overrides: vec![],
            grid: vec![
                "data.synthetic.cue=0,0.9".parse().unwrap(),
                "pretrain.enabled=false,true".parse().unwrap(),
            ],
            seeds: vec![1, 2],
            out: "sweep".into(),
        };
        let cells = plan.cells();
        assert_eq!(cells.len(), 4);
        assert_eq!(cells[1].name, "data.synthetic.cue=0 pretrain.enabled=true");
        assert_eq!(cells[1].folder, "cue=0+enabled=true");
        for bad in ["cue", "x=", "x=1,,2", "x=1,1", "seed=1,2", "=1"] {
            assert!(bad.parse::<GridAxis>().is_err(), "{bad}");
        }
    }
}
