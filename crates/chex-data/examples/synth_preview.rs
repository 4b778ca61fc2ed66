//! Writes the miniature synthetic sites to a folder and tiles a few images of each finding into
//! one PNG per site, for eyeballing the signs: `cargo run -p chex-data --example synth_preview -- OUT`.

use std::path::PathBuf;

use chex_data::synth::SynthConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "synth-preview".into()),
    );
    let mut config = SynthConfig::miniature(7);
    config.site_a.patients = 24;
    config.site_b.patients = 24;
    let summary = chex_data::write_synthetic_sites(&out, &config, &|| {})?;
    for (site, dir) in [
        ("site-a", out.join("site-a")),
        ("site-b", out.join("site-b")),
    ] {
        let truth: Vec<chex_data::synth::SynthRecord> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json"))?)?;
        let tiles: Vec<_> = truth.iter().filter(|r| !r.lateral).take(24).collect();
        let (cols, size) = (6u32, 128u32);
        let rows = (tiles.len() as u32).div_ceil(cols);
        let mut sheet = image::GrayImage::new(cols * size, rows * size);
        for (i, record) in tiles.iter().enumerate() {
            let img = image::open(dir.join(&record.image))?.to_luma8();
            let img =
                image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
            image::imageops::overlay(
                &mut sheet,
                &img,
                ((i as u32 % cols) * size) as i64,
                ((i as u32 / cols) * size) as i64,
            );
            println!("{site} tile {i}: {:?}", record.findings);
        }
        sheet.save(out.join(format!("{site}-sheet.png")))?;
    }
    println!("{summary:?}");
    Ok(())
}
