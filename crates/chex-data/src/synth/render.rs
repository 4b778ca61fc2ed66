//! Drawing a radiograph-like image: a chest (torso, lungs with markings, mediastinum, heart,
//! ribs, clavicles), the visible sign of each finding, and the site's acquisition style.
//! Bright means dense, as on a real film.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Finding, SiteStyle};

/// A square float canvas, values roughly in [0, 1].
pub(crate) struct Canvas {
    pub n: usize,
    pub px: Vec<f32>,
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Soft inside-ellipse mask: 1 inside, 0 outside, a smooth edge of relative width `soft`.
fn ellipse(u: f32, v: f32, cx: f32, cy: f32, rx: f32, ry: f32, soft: f32) -> f32 {
    let d = (((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2)).sqrt();
    1.0 - smoothstep(1.0 - soft, 1.0 + soft, d)
}

/// Smooth random field in about [-1, 1]: bilinear interpolation of a random grid.
struct ValueNoise {
    cells: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut ChaCha8Rng, cells: usize) -> Self {
        let grid = (0..(cells + 1) * (cells + 1))
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Self { cells, grid }
    }

    fn at(&self, u: f32, v: f32) -> f32 {
        let x = u.clamp(0.0, 0.9999) * self.cells as f32;
        let y = v.clamp(0.0, 0.9999) * self.cells as f32;
        let (i, j) = (y as usize, x as usize);
        let (fy, fx) = (y - i as f32, x - j as f32);
        let w = self.cells + 1;
        let g = |r: usize, c: usize| self.grid[r * w + c];
        let top = g(i, j) * (1.0 - fx) + g(i, j + 1) * fx;
        let bottom = g(i + 1, j) * (1.0 - fx) + g(i + 1, j + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// A patient's anatomy: fixed per patient, so follow-up images look like the same person.
#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    shift: f32,
    torso_rx: f32,
    lung_dx: f32,
    lung_rx: f32,
    lung_ry: f32,
    lung_cy: f32,
    heart_rx: f32,
    rib_phase: f32,
    mediastinum_w: f32,
}

impl Anatomy {
    pub fn sample(rng: &mut ChaCha8Rng) -> Self {
        Self {
            shift: rng.random_range(-0.02..0.02),
            torso_rx: rng.random_range(0.40..0.46),
            lung_dx: rng.random_range(0.17..0.20),
            lung_rx: rng.random_range(0.125..0.15),
            lung_ry: rng.random_range(0.26..0.31),
            lung_cy: rng.random_range(0.44..0.49),
            heart_rx: rng.random_range(0.095..0.12),
            rib_phase: rng.random_range(0.0..0.03),
            mediastinum_w: rng.random_range(0.05..0.065),
        }
    }

    fn lung_center(&self, side: usize) -> (f32, f32) {
        let sign = if side == 0 { -1.0 } else { 1.0 };
        (0.5 + self.shift + sign * self.lung_dx, self.lung_cy)
    }
}

/// Draws one frontal image of `n × n` pixels with the given findings, before site styling.
pub(crate) fn draw_frontal(
    n: usize,
    anatomy: &Anatomy,
    findings: &[Finding],
    rng: &mut ChaCha8Rng,
) -> Canvas {
    let has = |f: Finding| findings.contains(&f);
    let mut a = anatomy.clone();
    if has(Finding::Emphysema) {
        // Hyperinflation: taller lungs pushing a flattened diaphragm down.
        a.lung_ry *= 1.12;
        a.lung_cy += 0.02;
    }
    let markings = ValueNoise::new(rng, 24);
    let fine = ValueNoise::new(rng, 48);
    let mut px = vec![0.0f32; n * n];
    let mut lung = vec![0.0f32; n * n];
    let coords = |k: usize| -> (f32, f32) {
        (
            (k % n) as f32 / n as f32 + 0.5 / n as f32,
            (k / n) as f32 / n as f32 + 0.5 / n as f32,
        )
    };

    // Torso, lungs and their markings.
    let ptx_side = rng.random_range(0..2usize);
    let ptx_depth = rng.random_range(0.25..0.45f32);
    for (k, p) in px.iter_mut().enumerate() {
        let (u, v) = coords(k);
        let torso = ellipse(u, v, 0.5 + a.shift, 0.56, a.torso_rx, 0.52, 0.04);
        let mut value = 0.05 + 0.52 * torso;
        let mut lung_mask = 0.0f32;
        for side in 0..2 {
            let (cx, cy) = a.lung_center(side);
            lung_mask = lung_mask.max(ellipse(u, v, cx, cy, a.lung_rx, a.lung_ry, 0.06));
        }
        lung[k] = lung_mask;
        let mut texture = 0.06 * markings.at(u, v) + 0.035 * fine.at(u, v);
        if has(Finding::Emphysema) {
            value -= 0.07 * lung_mask;
            texture *= 0.4;
        }
        if has(Finding::Pneumothorax) {
            // Collapsed lung: the lateral part of one lung has no markings and is darker.
            let (cx, _) = a.lung_center(ptx_side);
            let lateral = if ptx_side == 0 { cx - u } else { u - cx };
            let edge = a.lung_rx * (1.0 - 2.0 * ptx_depth);
            let side_mask = if (u < 0.5) == (ptx_side == 0) {
                1.0
            } else {
                0.0
            };
            let region = side_mask * smoothstep(edge - 0.005, edge + 0.005, lateral);
            texture *= 1.0 - region;
            value -= 0.08 * region * lung_mask;
            // The visceral pleural line.
            let line = (-((lateral - edge) / 0.006).powi(2)).exp() * side_mask;
            value += 0.22 * line * lung_mask;
        }
        value += lung_mask * (-0.30 + texture);
        *p = value;
    }

    // Mediastinum, spine and heart drawn over the lungs.
    let mediastinum_w = if has(Finding::EnlargedCardiomediastinum) {
        a.mediastinum_w * 1.9
    } else {
        a.mediastinum_w
    };
    let heart_rx = if has(Finding::Cardiomegaly) {
        a.heart_rx * rng.random_range(1.65..1.9)
    } else {
        a.heart_rx
    };
    let heart_cx = 0.5 + a.shift + 0.035 + (heart_rx - a.heart_rx) * 0.35;
    let heart_cy = a.lung_cy + a.lung_ry * 0.5;
    for (k, p) in px.iter_mut().enumerate() {
        let (u, v) = coords(k);
        let band = 1.0
            - smoothstep(
                mediastinum_w * 0.8,
                mediastinum_w * 1.2,
                (u - 0.5 - a.shift).abs(),
            );
        let upper = smoothstep(0.08, 0.14, v) * (1.0 - smoothstep(0.55, 0.7, v));
        let m = band * upper;
        *p = *p * (1.0 - m) + 0.6 * m;
        let h = ellipse(u, v, heart_cx, heart_cy, heart_rx, 0.12, 0.08);
        *p = *p * (1.0 - h) + 0.66 * h;
        let spine = 1.0 - smoothstep(0.018, 0.03, (u - 0.5 - a.shift).abs());
        *p += 0.05 * spine * smoothstep(0.05, 0.1, v);
    }

    // Ribs: arcs across each hemithorax, one of them stepped when fractured.
    let fracture_rib = rng.random_range(2..7usize);
    let fracture_side = rng.random_range(0..2usize);
    for side in 0..2 {
        let (cx, _) = a.lung_center(side);
        for rib in 0..9usize {
            let y0 = 0.16 + a.rib_phase + rib as f32 * 0.062;
            let fractured = has(Finding::Fracture) && side == fracture_side && rib == fracture_rib;
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                let lateral = (u - 0.5 - a.shift).abs();
                if lateral < 0.04 || lateral > a.torso_rx - 0.02 || (u < 0.5) != (side == 0) {
                    continue;
                }
                let x = (u - cx) / 0.2;
                let mut y = y0 + 0.07 * x * x - 0.03 * (lateral - 0.18);
                if fractured && (u - cx).abs() > 0.02 && ((u > cx) == (side == 1)) {
                    y += 0.022;
                }
                let d = (v - y).abs();
                let mut rib_value = 0.085 * (1.0 - smoothstep(0.007, 0.012, d));
                if fractured && ((u - cx).abs() - 0.02).abs() < 0.006 {
                    rib_value = -0.05 * (1.0 - smoothstep(0.007, 0.02, d));
                }
                *p += rib_value;
            }
        }
    }
    // Clavicles.
    for (k, p) in px.iter_mut().enumerate() {
        let (u, v) = coords(k);
        let lateral = (u - 0.5 - a.shift).abs();
        let y = 0.13 + 0.08 * (lateral - 0.05);
        if (0.04..0.3).contains(&lateral) {
            *p += 0.12 * (1.0 - smoothstep(0.008, 0.014, (v - y).abs()));
        }
    }

    for &finding in findings {
        draw_finding(finding, n, &a, &lung, &mut px, rng);
    }
    Canvas { n, px }
}

fn draw_finding(
    finding: Finding,
    n: usize,
    a: &Anatomy,
    lung: &[f32],
    px: &mut [f32],
    rng: &mut ChaCha8Rng,
) {
    let side = rng.random_range(0..2usize);
    let (cx, cy) = a.lung_center(side);
    let coords = |k: usize| -> (f32, f32) {
        (
            (k % n) as f32 / n as f32 + 0.5 / n as f32,
            (k / n) as f32 / n as f32 + 0.5 / n as f32,
        )
    };
    match finding {
        Finding::PleuralEffusion => {
            // Fluid fills the lung base with a meniscus rising laterally: a blunted
            // costophrenic angle. Sometimes both sides.
            let both = rng.random_bool(0.3);
            let height = rng.random_range(0.10..0.2f32);
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                if !(both || (u < 0.5) == (side == 0)) {
                    continue;
                }
                let (lcx, lcy) = a.lung_center(if u < 0.5 { 0 } else { 1 });
                let lateral = (u - lcx).abs() / a.lung_rx;
                let level = lcy + a.lung_ry - height - 0.07 * lateral;
                let fluid = smoothstep(level - 0.012, level + 0.012, v) * lung[k];
                *p = *p * (1.0 - fluid) + 0.6 * fluid;
            }
        }
        Finding::Consolidation => {
            // One dense, homogeneous lobar patch.
            let (ox, oy) = (
                cx + rng.random_range(-0.03..0.03),
                cy + rng.random_range(0.0..0.12),
            );
            let (rx, ry) = (rng.random_range(0.06..0.09), rng.random_range(0.06..0.1));
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                let m = ellipse(u, v, ox, oy, rx, ry, 0.25) * lung[k];
                *p = *p * (1.0 - m) + 0.56 * m;
            }
        }
        Finding::Pneumonia => {
            // Several fluffy, ill-defined patches.
            let count = rng.random_range(3..6);
            for _ in 0..count {
                let (ox, oy) = (
                    cx + rng.random_range(-0.08..0.08),
                    cy + rng.random_range(-0.05..0.2),
                );
                let r = rng.random_range(0.025..0.045);
                for (k, p) in px.iter_mut().enumerate() {
                    let (u, v) = coords(k);
                    *p += 0.17 * ellipse(u, v, ox, oy, r, r, 0.6) * lung[k];
                }
            }
        }
        Finding::Edema => {
            // Bilateral perihilar ("bat-wing") haze fading towards the periphery.
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                let d = ((u - 0.5 - a.shift).abs() - 0.06).max(0.0);
                let haze = (-(d / 0.11).powi(2) - ((v - a.lung_cy - 0.03) / 0.2).powi(2)).exp();
                *p += 0.2 * haze * lung[k];
            }
        }
        Finding::LungLesion => {
            // A well-defined round density.
            let r = rng.random_range(0.018..0.05);
            let (ox, oy) = (
                cx + rng.random_range(-0.06..0.06),
                cy + rng.random_range(-0.15..0.1),
            );
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                *p += 0.3 * ellipse(u, v, ox, oy, r, r, 0.12) * lung[k].max(0.5);
            }
        }
        Finding::LungOpacity => {
            // Faint ground-glass haze over a broad area.
            let (ox, oy) = (
                cx + rng.random_range(-0.04..0.04),
                cy + rng.random_range(-0.1..0.1),
            );
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                *p += 0.1 * ellipse(u, v, ox, oy, 0.11, 0.14, 0.5) * lung[k];
            }
        }
        Finding::Atelectasis => {
            // Plate-like bands in the lower zone.
            let bands = rng.random_range(1..3);
            for b in 0..bands {
                let y0 = cy + 0.1 + b as f32 * 0.05 + rng.random_range(-0.02..0.02);
                let tilt = rng.random_range(-0.25..0.25f32);
                for (k, p) in px.iter_mut().enumerate() {
                    let (u, v) = coords(k);
                    if (u - cx).abs() > a.lung_rx * 0.8 {
                        continue;
                    }
                    let y = y0 + tilt * (u - cx);
                    *p += 0.22 * (1.0 - smoothstep(0.006, 0.012, (v - y).abs())) * lung[k];
                }
            }
        }
        Finding::PleuralOther => {
            // Pleural thickening: a bright rim along the lateral wall and apex of one lung.
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                if (u < 0.5) != (side == 0) {
                    continue;
                }
                let d = (((u - cx) / a.lung_rx).powi(2) + ((v - cy) / a.lung_ry).powi(2)).sqrt();
                let lateral = if side == 0 { cx - u } else { u - cx };
                let rim = (1.0 - smoothstep(0.0, 0.09, (1.0 - d).abs()))
                    * smoothstep(-0.05, 0.02, lateral);
                *p += 0.2 * rim * lung[k].max(0.3);
            }
        }
        Finding::SupportDevices => {
            // Very bright, thin lines: an endotracheal tube, often a central line, sometimes
            // a pacemaker box with its lead.
            let x_tube = 0.5 + a.shift + rng.random_range(-0.01..0.01);
            let tip = rng.random_range(0.25..0.33);
            let line = rng.random_bool(0.6);
            let pacer = rng.random_bool(0.3);
            for (k, p) in px.iter_mut().enumerate() {
                let (u, v) = coords(k);
                if v < tip {
                    *p += 0.45 * (1.0 - smoothstep(0.004, 0.008, (u - x_tube).abs()));
                }
                if line && v > 0.1 && v < 0.4 {
                    let x = 0.36 + 0.12 * ((v - 0.1) / 0.3);
                    *p += 0.4 * (1.0 - smoothstep(0.003, 0.007, (u - x).abs()));
                }
                if pacer {
                    let boxed = ((u - 0.22).abs() < 0.035) && ((v - 0.17).abs() < 0.025);
                    if boxed {
                        *p += 0.5;
                    }
                    let lead_y = 0.17 + (u - 0.22) * 1.1;
                    if u > 0.22 && u < 0.55 {
                        *p += 0.35 * (1.0 - smoothstep(0.003, 0.007, (v - lead_y).abs()));
                    }
                }
            }
        }
        // Drawn as part of the anatomy.
        Finding::Cardiomegaly
        | Finding::EnlargedCardiomediastinum
        | Finding::Pneumothorax
        | Finding::Fracture
        | Finding::Emphysema => {}
    }
}

/// A lateral view: one broad lung field, the spine behind, the heart in front. Findings are
/// not drawn (lateral images are filtered out by the frontal view filter).
pub(crate) fn draw_lateral(n: usize, anatomy: &Anatomy, rng: &mut ChaCha8Rng) -> Canvas {
    let noise = ValueNoise::new(rng, 24);
    let px = (0..n * n)
        .map(|k| {
            let (u, v) = ((k % n) as f32 / n as f32, (k / n) as f32 / n as f32);
            let body = ellipse(u, v, 0.5, 0.55, 0.42, 0.5, 0.04);
            let lung = ellipse(u, v, 0.5, anatomy.lung_cy, 0.3, anatomy.lung_ry, 0.08);
            let spine = smoothstep(0.76, 0.8, u) * (1.0 - smoothstep(0.86, 0.9, u));
            let heart = ellipse(u, v, 0.36, anatomy.lung_cy + 0.14, 0.13, 0.13, 0.1);
            0.05 + 0.5 * body - 0.25 * lung
                + 0.05 * noise.at(u, v) * lung
                + 0.2 * spine
                + 0.25 * heart
        })
        .collect();
    Canvas { n, px }
}

/// Applies a site's acquisition: exposure, contrast curve, blur, noise, then resampling to the
/// output size. Returns 8-bit grey pixels.
pub(crate) fn apply_style(
    canvas: Canvas,
    style: &SiteStyle,
    out_size: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let n = canvas.n;
    let mut px: Vec<f32> = canvas
        .px
        .iter()
        .map(|&v| (v * style.exposure).clamp(0.0, 1.0).powf(style.gamma))
        .collect();
    if style.blur_sigma > 0.0 {
        px = gaussian_blur(&px, n, style.blur_sigma);
    }
    let out: Vec<f32> = if out_size == n {
        px
    } else {
        // Bilinear resampling: the output size differs from the rendering size when a site's
        // effective resolution is lower than its file resolution.
        (0..out_size * out_size)
            .map(|k| {
                let x = ((k % out_size) as f32 + 0.5) * n as f32 / out_size as f32 - 0.5;
                let y = ((k / out_size) as f32 + 0.5) * n as f32 / out_size as f32 - 0.5;
                let (x0, y0) = (x.floor().max(0.0) as usize, y.floor().max(0.0) as usize);
                let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
                let (fx, fy) = (
                    (x - x0 as f32).clamp(0.0, 1.0),
                    (y - y0 as f32).clamp(0.0, 1.0),
                );
                let top = px[y0 * n + x0] * (1.0 - fx) + px[y0 * n + x1] * fx;
                let bottom = px[y1 * n + x0] * (1.0 - fx) + px[y1 * n + x1] * fx;
                top * (1.0 - fy) + bottom * fy
            })
            .collect()
    };
    out.into_iter()
        .map(|v| {
            let noisy = v + style.noise_std * gaussian(rng);
            (noisy.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller; the rng is seeded per image, so noise is reproducible.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn gaussian_blur(px: &[f32], n: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i as f32).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        (0..n * n)
            .map(|k| {
                let (i, j) = ((k / n) as isize, (k % n) as isize);
                kernel
                    .iter()
                    .enumerate()
                    .map(|(t, w)| {
                        let o = t as isize - radius;
                        let (ii, jj) = if horizontal { (i, j + o) } else { (i + o, j) };
                        let ii = ii.clamp(0, n as isize - 1) as usize;
                        let jj = jj.clamp(0, n as isize - 1) as usize;
                        w * src[ii * n + jj]
                    })
                    .sum()
            })
            .collect()
    };
    pass(&pass(px, true), false)
}
