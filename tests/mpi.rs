//! Training and evaluation over MPI (`mpirun -n 2 vgg …`, the `mpi` feature) against one process:
//! the same parameters after the same steps, the same evaluation, a resumed run that continues
//! the same run, the same classifications and features, and jobs that stop cleanly when the loss is not finite or a rank hangs.
//!
//! Each rank runs one thread (`RAYON_NUM_THREADS=1`), on loopback, on the first images of
//! Fashion-MNIST (Debian's `dataset-fashion-mnist`). What is compared: every tensor of the written
//! weights, as max |Δ| over max |value| of the tensor; measured here 3e-6 for the model without
//! BatchNorm and 1.2e-7 for the synchronised one (the sums of the gradients across ranks round
//! differently from one process's sums), against the tolerance 1e-5 the issue asks for.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::scratch;
use vgg::weights::{StateDict, load_file};

const VGG: &str = env!("CARGO_BIN_EXE_vgg");

/// 24 training images in batches of 8 (three SGD steps an epoch), 16 test images, with
/// augmentation, so that the shards' per-image draws are exercised.
const SMALL: &[&str] = &["--width", "0.125", "--head", "cifar", "--limit", "24", "--limit-test", "16", "--batch", "8"];

fn one(args: &[&str]) -> Output {
    Command::new(VGG).args(args).env("RAYON_NUM_THREADS", "1").output().expect("running vgg")
}

/// `mpirun` with its arguments, ended after 300 s whatever happens (coreutils' timeout), so that
/// a hang fails the test instead of stalling the run.
fn mpirun() -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "mpirun", "--oversubscribe", "--allow-run-as-root"]);
    cmd
}

fn two(args: &[&str]) -> Output {
    let mut cmd = mpirun();
    cmd.args(["-n", "2", "-x", "RAYON_NUM_THREADS=1", VGG]).args(args);
    cmd.env("RAYON_NUM_THREADS", "1").output().expect("running mpirun (Debian's openmpi-bin)")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

fn train(ranks: usize, arch: &str, extra: &[&str], dir: &Path) -> Output {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["train", "--arch", arch, "--out", dir, "--json", "--lr", "0.05"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let out = if ranks == 1 { one(&args) } else { two(&args) };
    ok(out, &format!("{ranks}-process training of {arch} {extra:?}"))
}

/// The largest difference of any tensor relative to its largest value. Tensors whose values all
/// stay below 1e-3 after three small steps (BatchNorm shifts) are sums of gradients that largely
/// cancel, where f32 rounding of the partial sums is relatively large: those are compared in units
/// of 1e-3 (a tolerance of 1e-5 means |Δ| < 1e-8). The biases of convolutions that feed BatchNorm
/// (and their momentum) have a true gradient of zero and hold rounding only: those are left to
/// the absolute check of [`rounding_only`].
fn worst(a: &StateDict, b: &StateDict) -> (f64, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = (0f64, String::new());
    for (key, ea) in a {
        let eb = &b[key];
        let diff = ea.data.iter().zip(&eb.data).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let rel = if rounding_only(key, a) {
            assert!(diff < 1e-6, "{key}: |Δ| {diff:e}");
            0.0
        } else {
            (diff / ea.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3)) as f64
        };
        if rel > worst.0 {
            worst = (rel, key.clone());
        }
    }
    worst
}

/// Whether `key` is the bias of a convolution followed by BatchNorm, or its momentum.
fn rounding_only(key: &str, sd: &StateDict) -> bool {
    let key = key.strip_prefix("momentum_buffer.").unwrap_or(key);
    let Some(layer) = key.strip_prefix("features.").and_then(|k| k.strip_suffix(".bias")) else { return false };
    layer.parse::<usize>().is_ok_and(|i| sd.contains_key(&format!("features.{}.running_mean", i + 1)))
}

/// The ten example images of `assets/fashion-mnist`, in name order.
fn example_images() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let mut images: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".png"))
        .collect();
    images.sort();
    images
}

fn weights(dir: &Path) -> StateDict {
    load_file(&dir.join("last.safetensors")).expect("the run's checkpoint")
}

#[test]
fn two_ranks_take_the_steps_of_one_process_without_batchnorm() {
    let (a, b, c) = (scratch("mpi-plain-1"), scratch("mpi-plain-2"), scratch("mpi-plain-2-between"));
    // Dropout in the head: each image's mask comes from its own seed, wherever it is computed.
    // Buckets of 10 kB: the gradients go out in many, summed on the second thread while the
    // backward pass goes on, or (--no-overlap) between layers.
    let extra = ["--dropout", "0.5", "--epochs", "1", "--bucket-mb", "0.01"];
    let one_out = train(1, "vgg11", &extra, &a);
    let two_out = train(2, "vgg11", &extra, &b);
    let (rel, key) = worst(&weights(&a), &weights(&b));
    eprintln!("without BatchNorm: worst {key} {rel:e}");
    assert!(rel < 1e-5, "{key}: {rel:e}");
    train(2, "vgg11", &[&extra[..], &["--no-overlap"]].concat(), &c);
    let (rel, key) = worst(&weights(&a), &weights(&c));
    assert!(rel < 1e-5, "between layers: {key}: {rel:e}");
    // Only rank 0 reports: one line of metrics, and the same training loss.
    let metrics = |o: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
    };
    let (m1, m2) = (metrics(&one_out), metrics(&two_out));
    assert_eq!(m2.len(), 1, "{m2:?}");
    let loss = |m: &serde_json::Value| m["train_loss"].as_f64().unwrap();
    assert!((loss(&m1[0]) - loss(&m2[0])).abs() < 1e-6, "{} vs {}", loss(&m1[0]), loss(&m2[0]));
    let said = String::from_utf8_lossy(&two_out.stderr);
    assert!(
        said.contains("data-parallel over 2 processes") && said.contains("summed while the backward pass runs"),
        "{said}"
    );
}

#[test]
fn synchronised_batchnorm_takes_the_steps_of_one_process() {
    let (a, b, c) = (scratch("mpi-bn-1"), scratch("mpi-bn-sync"), scratch("mpi-bn-local"));
    train(1, "vgg11_bn", &["--epochs", "1"], &a);
    train(2, "vgg11_bn", &["--epochs", "1", "--sync-bn"], &b);
    let (rel, key) = worst(&weights(&a), &weights(&b));
    eprintln!("synchronised BatchNorm: worst {key} {rel:e}");
    assert!(rel < 1e-5, "{key}: {rel:e}");
    // Without --sync-bn each rank normalises its 4 images by their own statistics: it trains, but
    // it is another computation (here the BatchNorm shifts differ by a large fraction).
    train(2, "vgg11_bn", &["--epochs", "1"], &c);
    let local = weights(&c);
    assert!(local.values().all(|e| e.data.iter().all(|v| v.is_finite())));
    let (rel, key) = worst(&weights(&a), &local);
    eprintln!("per-rank BatchNorm: worst {key} {rel:e}");
    assert!(rel > 1e-3, "per-rank statistics should differ from the global ones ({key}: {rel:e})");
}

#[test]
fn a_two_rank_checkpoint_resumes_in_one_process_as_the_same_run() {
    let (straight, split) = (scratch("mpi-resume-straight"), scratch("mpi-resume-split"));
    train(1, "vgg11", &["--epochs", "2"], &straight);
    train(2, "vgg11", &["--epochs", "2", "--stop-after", "1"], &split);
    let lines = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines(&split), 1, "the 2-rank part stops after one epoch");
    train(1, "vgg11", &["--epochs", "2", "--resume"], &split);
    assert_eq!(lines(&split), 2);
    let (rel, key) = worst(&weights(&straight), &weights(&split));
    eprintln!("resumed: worst {key} {rel:e}");
    assert!(rel < 1e-5, "{key}: {rel:e}");
}

#[test]
fn two_rank_evaluation_equals_one_process_exactly() {
    // The built-in model on 600 test images in batches of 64: ranks take alternate batches.
    let args = ["eval", "--limit-test", "600", "--batch", "64", "--json"];
    let one_out = ok(one(&args), "1-process eval");
    let two_out = ok(two(&args), "2-process eval");
    assert!(!one_out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&one_out.stdout), String::from_utf8_lossy(&two_out.stdout));
}

#[test]
fn two_rank_classification_equals_one_process_exactly() {
    // The ten example images in batches of 3: rank 0 takes batches 0 and 2, rank 1 batches 1 and 3.
    let images = example_images();
    let mut args = vec!["classify", "--json", "--batch", "3"];
    args.extend(images.iter().map(String::as_str));
    let one_out = ok(one(&args), "1-process classify");
    let two_out = ok(two(&args), "2-process classify");
    assert_eq!(String::from_utf8_lossy(&one_out.stdout).lines().count(), images.len());
    assert_eq!(String::from_utf8_lossy(&one_out.stdout), String::from_utf8_lossy(&two_out.stdout));
}

#[test]
fn two_rank_features_equal_one_process_exactly() {
    // Five example images, shared out one by one: the stacked activations are the same bits.
    let mut images = example_images();
    images.truncate(5);
    let (a, b) = (scratch("mpi-feat").join("one.safetensors"), scratch("mpi-feat-2").join("two.safetensors"));
    let args = |out: &Path| {
        let mut v = vec!["features".to_string(), "--layers".into(), "pool5,fc7".into(), "--out".into()];
        v.push(out.display().to_string());
        v.extend(images.iter().cloned());
        v
    };
    let (args_a, args_b) = (args(&a), args(&b));
    ok(one(&args_a.iter().map(String::as_str).collect::<Vec<_>>()), "1-process features");
    ok(two(&args_b.iter().map(String::as_str).collect::<Vec<_>>()), "2-process features");
    let (fa, fb) = (load_file(&a).unwrap(), load_file(&b).unwrap());
    assert_eq!(fa["fc7"].shape, vec![5, 10]);
    assert_eq!(fa, fb);
}

#[test]
fn a_loss_that_is_not_finite_stops_every_rank() {
    let dir = scratch("mpi-nan");
    let d = dir.to_str().unwrap();
    let mut args = vec!["train", "--arch", "vgg11", "--out", d, "--epochs", "1", "--json"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--lr", "1e30", "--schedule", "constant"]);
    let started = Instant::now();
    // mpirun would stop the other rank as soon as one exits with an error; told not to, each rank
    // must stop by itself, or the job would hang.
    let out = mpirun()
        .args(["--mca", "orte_abort_on_non_zero_status", "0", "-n", "2"])
        .args(["-x", "RAYON_NUM_THREADS=1", VGG])
        .args(&args)
        .output()
        .expect("running mpirun");
    // (mpirun's own status is then 0 whatever the ranks' were: the messages tell.)
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("the loss became NaN at epoch 1, step").count(), 2, "both ranks say why they stop:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_rank_that_hangs_ends_the_job_with_an_error() {
    let dir = scratch("mpi-hang");
    // Rank 1 stops itself (SIGSTOP) two seconds into a run that lasts far longer; rank 0 then waits in
    // a collective until --mpi-timeout and ends the job, naming the cause.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 2; kill -STOP $$) & fi; exec {VGG} train --arch vgg11 \
         --width 0.125 --head cifar --limit 4000 --limit-test 16 --batch 8 --epochs 20 --mpi-timeout 3 --json --out {}",
        dir.display()
    );
    let started = Instant::now();
    let out = mpirun()
        .args(["-n", "2", "-x", "RAYON_NUM_THREADS=1", "bash", "-c", &script])
        .output()
        .expect("running mpirun");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0 of 2 waited") && err.contains("a rank has died or hangs"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
}
