//! The power timeline rendered by a real SVG renderer (librsvg's
//! `rsvg-convert`, installed by scripts/install-deps) and the picture
//! checked: not blank, one area per measured component in its colour, none
//! for a component that was not measured. The PNGs are left in
//! `target/plot-check/` for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use carbontrack::carbon::intensity::Resolved;
use carbontrack::footprint::{NodeFootprint, Row, node_rows};
use carbontrack::measure::sampler::TimelinePoint;
use carbontrack::measure::{Component, DeviceEnergy, Status};
use carbontrack::report::plot::{PlotInput, SERIES, render};
use carbontrack::units::{GramsPerKwh, Joules, Watts};

/// Renders `svg` to PNG with rsvg-convert; returns the RGBA pixels, width
/// and height.
pub fn rasterise(svg: &str, name: &str) -> (Vec<u8>, u32, u32) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plot-check");
    std::fs::create_dir_all(&dir).unwrap();
    let svg_path = dir.join(format!("{name}.svg"));
    let png_path = dir.join(format!("{name}.png"));
    std::fs::write(&svg_path, svg).unwrap();
    let out = Command::new("rsvg-convert")
        .arg("--format=png")
        .arg("--background-color=white")
        .arg("-o")
        .arg(&png_path)
        .arg(&svg_path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run rsvg-convert ({e}): install librsvg2-bin (scripts/install-deps)")
        });
    assert!(
        out.status.success(),
        "rsvg-convert refused {}: {}",
        svg_path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    decode(&png_path)
}

pub fn decode(path: &Path) -> (Vec<u8>, u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => buf[..info.buffer_size()]
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (rgba, info.width, info.height)
}

fn hex(c: &str) -> [u8; 3] {
    let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// Pixels of exactly `colour` inside the chart area (x 80..930, y 78..400 of
/// the 960 × 560 picture, scaled to the PNG's size).
fn pixels_of(img: &(Vec<u8>, u32, u32), colour: [u8; 3]) -> usize {
    let (px, w, h) = img;
    let (sx, sy) = (f64::from(*w) / 960.0, f64::from(*h) / 560.0);
    let (x0, x1) = ((82.0 * sx) as u32, (928.0 * sx) as u32);
    let (y0, y1) = ((80.0 * sy) as u32, (398.0 * sy) as u32);
    let mut n = 0;
    for y in y0..y1 {
        for x in x0..x1 {
            let i = ((y * w + x) * 4) as usize;
            if px[i..i + 3] == colour {
                n += 1;
            }
        }
    }
    n
}

/// Share of pixels that are not white.
fn inked(img: &(Vec<u8>, u32, u32)) -> f64 {
    let (px, w, h) = img;
    let ink = px
        .chunks(4)
        .filter(|p| p[0] < 250 || p[1] < 250 || p[2] < 250)
        .count();
    ink as f64 / (f64::from(*w) * f64::from(*h))
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// An hour of training: a CPU that works harder during data loading, steady
/// DRAM, a GPU that dips between epochs.
fn timeline(gpu: bool) -> Vec<TimelinePoint> {
    (0..60)
        .map(|m| {
            let in_epoch = m % 15;
            TimelinePoint {
                start: t0() + Duration::from_secs(60 * m),
                duration: Duration::from_secs(60),
                cpu: Some(Watts(if in_epoch < 2 { 140.0 } else { 85.0 })),
                dram: Some(Watts(18.0)),
                gpu: gpu.then_some(Watts(if in_epoch < 2 { 90.0 } else { 260.0 })),
            }
        })
        .collect()
}

fn rows(tl: &[TimelinePoint], gpu: bool) -> Vec<Row> {
    let energy = |f: fn(&TimelinePoint) -> Option<Watts>| {
        Joules(tl.iter().filter_map(|p| f(p).map(|w| w.0 * 60.0)).sum())
    };
    let dev = |component, device: &str, e: Joules| DeviceEnergy {
        component,
        device: device.into(),
        share: 1.0,
        energy: Some(e),
        status: Status::Ok,
    };
    let mut devices = vec![
        dev(Component::Cpu, "package-0", energy(|p| p.cpu)),
        dev(Component::Dram, "package-0", energy(|p| p.dram)),
    ];
    if gpu {
        devices.push(dev(
            Component::Gpu,
            "GPU-0f1e2d3c-0000-1111-2222-333344445555",
            energy(|p| p.gpu),
        ));
    }
    let fp = NodeFootprint {
        job_id: "4242".into(),
        node: "gpu-node-07".into(),
        start: t0(),
        end: t0() + Duration::from_secs(3600),
        devices,
    };
    let intensity = Resolved {
        g_per_kwh: GramsPerKwh(445.0),
        source: "world average".into(),
        note: None,
    };
    node_rows(&fp, 1.58, &intensity)
}

#[test]
fn the_timeline_renders_with_one_area_per_measured_component() {
    let epochs: Vec<Duration> = (1..=4).map(|k| Duration::from_secs(900 * k)).collect();
    for (gpu, name) in [(true, "cpu-dram-gpu"), (false, "cpu-dram")] {
        let tl = timeline(gpu);
        let rows = rows(&tl, gpu);
        let svg = render(&PlotInput {
            job_id: "4242",
            node: "gpu-node-07",
            start: t0(),
            elapsed: Duration::from_secs(3600),
            points: &tl,
            epochs: &epochs,
            time_limit: Some(Duration::from_secs(5400)),
            prediction: Some((10, 1, Duration::from_secs(9000))),
            rows: &rows,
            pue: 1.58,
            note: None,
        });
        let img = rasterise(&svg, name);
        assert!(img.1 >= 960 && img.2 >= 560, "{}x{}", img.1, img.2);
        let ink = inked(&img);
        assert!(ink > 0.15, "{name}: the picture is nearly blank ({ink:.3} inked)");
        for s in SERIES {
            let n = pixels_of(&img, hex(s.colour));
            let measured = s.component != "gpu" || gpu;
            // DRAM is a thin hatched band: its yellow shows between the lines.
            let least = if s.component == "dram" { 1_000 } else { 5_000 };
            if measured {
                assert!(
                    n > least,
                    "{name}: the {} area ({}) has {n} pixels",
                    s.label,
                    s.colour
                );
            } else {
                assert_eq!(n, 0, "{name}: {} drawn though not measured", s.label);
            }
        }
        // The legend carries the totals: CPU 0.0923 kWh … and the CO2e.
        for want in ["CPU: 0.0923 kWh", "DRAM: 0.0180 kWh", "CO2e", "time limit"] {
            assert!(svg.contains(want), "{name}: no `{want}` in the legend");
        }
    }
}

#[test]
fn a_week_long_timeline_stays_small_and_renders() {
    let tl: Vec<TimelinePoint> = (0..7 * 24 * 60)
        .map(|m| TimelinePoint {
            start: t0() + Duration::from_secs(60 * m),
            duration: Duration::from_secs(60),
            cpu: Some(Watts(100.0 + (m % 97) as f64)),
            dram: None,
            gpu: Some(Watts(1500.0 + (m % 1440) as f64)),
        })
        .collect();
    let rows = [];
    let svg = render(&PlotInput {
        job_id: "7",
        node: "n",
        start: t0(),
        elapsed: Duration::from_secs(7 * 86_400),
        points: &tl,
        epochs: &[],
        time_limit: None,
        prediction: None,
        rows: &rows,
        pue: 1.0,
        note: None,
    });
    assert!(svg.len() < 200_000, "{} bytes", svg.len());
    let img = rasterise(&svg, "week");
    assert!(pixels_of(&img, hex(SERIES[2].colour)) > 5_000);
    assert!(svg.contains(" kW<"), "kW ticks expected");
    assert!(svg.contains(">7d<"), "day ticks expected");
}
