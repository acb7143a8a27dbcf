//! The power timeline rendered by a real SVG renderer (librsvg's
//! `rsvg-convert`, installed by scripts/install-deps) and the picture
//! checked: not blank, one area per measured component in its colour, none
//! for a component that was not measured. The PNGs are left in
//! `target/plot-check/` for a person to look at.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use carbontrack::carbon::intensity::Resolved;
use carbontrack::footprint::{NodeFootprint, Row, node_rows};
use carbontrack::measure::sampler::TimelinePoint;
use carbontrack::measure::{Component, DeviceEnergy, Status};
use carbontrack::report::plot::{PlotInput, SERIES, render};
use carbontrack::units::{GramsPerKwh, Joules, Watts};
use carbontrack_fixtures::svg_render::{self, Picture, hex};

/// Renders `svg` with rsvg-convert into `target/tmp/plot-check/NAME.png`.
fn rasterise(svg: &str, name: &str) -> Picture {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plot-check");
    std::fs::create_dir_all(&dir).unwrap();
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg).unwrap();
    svg_render::rasterise(&svg_path, &dir.join(format!("{name}.png")))
}

/// Pixels of exactly `colour` inside the chart area (x 82..928, y 80..398 of
/// the 960 × 560 picture).
fn pixels_of(img: &Picture, colour: [u8; 3]) -> usize {
    img.count(
        colour,
        82.0 / 960.0,
        80.0 / 560.0,
        928.0 / 960.0,
        398.0 / 560.0,
    )
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
        assert!(
            img.width >= 960 && img.height >= 560,
            "{}x{}",
            img.width,
            img.height
        );
        let ink = img.inked();
        assert!(
            ink > 0.15,
            "{name}: the picture is nearly blank ({ink:.3} inked)"
        );
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

#[test]
fn a_timeline_with_nothing_measured_says_so() {
    let mut rows = rows(&timeline(false), false);
    for r in &mut rows {
        r.energy_j = None;
        r.energy_kwh = None;
        r.co2e_g = None;
        r.status = "unavailable: no RAPL".into();
    }
    let svg = render(&PlotInput {
        job_id: "9",
        node: "n",
        start: t0(),
        elapsed: Duration::from_secs(600),
        points: &[],
        epochs: &[],
        time_limit: Some(Duration::from_secs(900)),
        prediction: None,
        rows: &rows,
        pue: 1.58,
        note: Some("The power shown is the last step's; the totals cover every step of the job"),
    });
    let img = rasterise(&svg, "nothing");
    assert!(img.inked() > 0.02, "blank");
    for s in SERIES {
        assert_eq!(pixels_of(&img, hex(s.colour)), 0, "{} drawn", s.label);
    }
    for want in [
        "No power was measured",
        "CPU: not measured",
        "Total: unavailable",
        "the totals cover every step",
    ] {
        assert!(svg.contains(want), "no `{want}`:\n{svg}");
    }
}
