//! How long securing and releasing takes: `cargo run --release -p kura-catalog --example
//! secure_latency -- URL [TARGETS] [ROUNDS]`. URL is a SQLite path or a postgres:// URL of an
//! empty database. Prints the median and 95th percentile of secure(n=2) and of finish.

use std::time::{Duration, Instant};

use kura_catalog::{Catalog, Constraints};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or("usage: secure_latency URL [TARGETS] [ROUNDS]")?;
    let targets: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(300), |s| s.parse())?;
    let c = Catalog::open(url)?;
    for i in 0..targets {
        c.add_local_target(&format!("bench-t{i}"), &format!("/srv/bench-t{i}"))?;
    }
    let (mut sec, mut fin) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let g = c.secure(0, 2, &Constraints::default())?;
        sec.push(t.elapsed());
        let t = Instant::now();
        g.finish(Ok(()))?;
        fin.push(t.elapsed());
    }
    println!(
        "{} targets, {rounds} rounds: secure(n=2) median {:.2} ms p95 {:.2} ms; \
         finish median {:.2} ms p95 {:.2} ms",
        targets,
        pct(&mut sec, 0.5),
        pct(&mut sec, 0.95),
        pct(&mut fin, 0.5),
        pct(&mut fin, 0.95)
    );
    Ok(())
}
