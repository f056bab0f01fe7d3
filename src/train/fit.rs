//! The training loop: deterministic data order and augmentation for a seed, a prefetching loader
//! thread, a [`Learner`] stepping each batch, evaluation after each epoch, atomic checkpoints
//! that resume to the same result as an uninterrupted run.

use std::ops::ControlFlow;
use std::sync::mpsc::sync_channel;

use super::EpochMetrics;
use super::TrainError;
use super::checkpoint::{RunDir, TrainState, load_last, save_last};
use super::config::{FitConfig, frozen_keys};
use super::learner::{Learner, learner};
use crate::data::Dataset;
use crate::data::batch::{Augment, PixelNorm, epoch_order, make_batch, make_batch_seeded};
use crate::dist::shard;
use crate::engine::DataParallel;
use crate::eval::{Evaluation, evaluate_net};
use crate::file::FileError;
use crate::model::Vgg;
use crate::net::RunsOn;
use crate::weights::safetensors::{self as st, Meta};
use crate::weights::{Dtype, StateDict, Strict, WeightsError};

fn preprocess_for(ds: &Dataset, fit: &FitConfig, norm: PixelNorm) -> crate::image::Preprocess {
    use crate::image::{Filter, Normalize, Preprocess};
    let normalize = if ds.shape[0] == 1 {
        Normalize::Gray { mean: norm.mean[0], std: norm.std[0] }
    } else {
        Normalize::MeanStd { mean: norm.mean, std: norm.std }
    };
    // Files are scaled to the training images' size, then padded to the canvas as in training.
    Preprocess { resize: Some(ds.shape[1]), crop: Some([fit.canvas, fit.canvas]), filter: Filter::Bilinear, normalize }
}

/// Progress reports from [`fit`].
pub enum Event<'a> {
    /// An epoch begins: (epoch, epochs planned, steps in it).
    EpochStart(usize, usize, usize),
    /// A step finished: (step, loss, accuracy of the batch, learning rate).
    Step(usize, f32, f64, f64),
    /// The epoch ended and was evaluated.
    EpochEnd(&'a EpochMetrics),
    /// What runs the steps (once, before the first epoch), saying why when it is not the engine.
    RunsOn(RunsOn),
}

/// How a run is carried out, as opposed to what defines it ([`FitConfig`], saved in its
/// checkpoints): a run resumed on another number of processes is the same run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Data-parallel over these processes: each steps its shard of every batch, and rank 0 alone
    /// writes files and reports events.
    pub parallel: Option<DataParallel>,
}

impl RunOptions {
    /// A run continued from its last checkpoint, in this process alone.
    pub fn resuming() -> Self {
        RunOptions { resume: true, parallel: None }
    }
}

/// The seed of image `position` of epoch `epoch`'s order: its augmentation and (mixed further)
/// its dropout masks draw from it, so that neither depends on the batch or process it lands in.
pub fn image_seed(seed: u64, epoch: usize, position: usize) -> u64 {
    let mut z = seed ^ ((epoch as u64) << 40 | position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Trains `model` (built on an autodiff device) on `train`, evaluating on `test` after each epoch
/// and checkpointing into `dir`. With `run.resume`, continues from `dir`'s last checkpoint. `events`
/// may stop the run by returning `Break`: mid-epoch, nothing of that epoch is kept (as after an
/// interruption); at an epoch's end, after its checkpoint.
pub fn fit(
    mut model: Vgg,
    train: &Dataset,
    test: &Dataset,
    fit: &FitConfig,
    dir: &RunDir,
    run: &RunOptions,
    events: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<(Vgg, TrainState), TrainError> {
    let (rank, ranks) = run.parallel.as_ref().map_or((0, 1), |p| (p.group.rank(), p.group.size()));
    let root = rank == 0;
    // Only rank 0 reports; the others follow the loop without a say in it.
    let mut events = |e: Event| if root { events(e) } else { ControlFlow::Continue(()) };
    let last = train.len() % fit.batch_size;
    if ranks > 1 && (fit.batch_size < ranks || (last > 0 && last < ranks)) {
        return Err(TrainError::Config(format!(
            "batches of {} images ({} in the last) cannot be split over {ranks} processes; \
             choose --batch so that every batch has at least one image per process",
            fit.batch_size,
            if last > 0 { last } else { fit.batch_size }
        )));
    }
    if root {
        std::fs::create_dir_all(&dir.0)
            .map_err(|err| WeightsError::File(FileError::Io { path: dir.0.display().to_string(), err }))?;
    }
    let (opt_sd, mut state) = if run.resume && dir.last().exists() {
        let (opt_sd, state) = load_last(&dir.last(), &mut model)?;
        if &state.fit != fit {
            return Err(TrainError::Checkpoint(format!(
                "{} was written by a run with other settings; resume with the same ones",
                dir.last().display()
            )));
        }
        (opt_sd, state)
    } else {
        let norm = PixelNorm::of(train);
        (
            StateDict::new(),
            TrainState { epochs_done: 0, fit: fit.clone(), norm, history: vec![], best_acc: -1.0, swa_count: 0 },
        )
    };
    let norm = state.norm;
    let pre = preprocess_for(train, fit, norm);
    // What `best.safetensors` and `unaveraged.safetensors` record besides the tensors.
    let weights_meta = Meta { config: Some(model.config().clone()), preprocess: Some(pre.clone()), extra: vec![] };
    let frozen = frozen_keys(&model, fit.freeze.as_deref())?;
    let mut learner = learner(&model, fit, frozen, &opt_sd, state.swa_count, run.parallel.clone())?;
    // Every process stops where rank 0's events stop it.
    if agree(run, usize::from(events(Event::RunsOn(learner.runs_on())).is_break())) == 1 {
        return Ok((model, state));
    }
    let group: &dyn crate::dist::Collective = match &run.parallel {
        Some(p) => &*p.group,
        None => &crate::dist::Single,
    };
    let test_on =
        |learner: &dyn Learner| evaluate_net(learner.network(), test, fit.canvas, norm, 256, false, group, &mut |_| {});
    let [c, _, _] = train.shape;
    let steps_per_epoch = train.len().div_ceil(fit.batch_size);
    loop {
        let epoch = state.epochs_done + 1;
        // A time budget plans from measured times, which differ between processes: rank 0's plan.
        let planned = agree(run, fit.planned_epochs(&state.history));
        if epoch > planned {
            break;
        }
        let total = steps_per_epoch * planned;
        let started = std::time::Instant::now();
        learner.start_epoch(fit.seed.wrapping_add(epoch as u64));
        if agree(run, usize::from(events(Event::EpochStart(epoch, planned, steps_per_epoch)).is_break())) == 1 {
            return Ok((model, state));
        }
        let order = epoch_order(train.len(), fit.seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = fit.lr;
        let (tx, rx) = sync_channel::<(Vec<f32>, Vec<usize>, Vec<u64>, usize)>(3);
        let result: Result<bool, TrainError> = std::thread::scope(|s| {
            // The sender moves into the loader so that the channel closes when the epoch's data ends.
            s.spawn(move || {
                for (b, chunk) in order.chunks(fit.batch_size).enumerate() {
                    // This process's shard of the batch; each image's draws depend on its place in
                    // the epoch alone, so a resumed run, or one on other processes, repeats them.
                    let mine = shard(chunk.len(), rank, ranks);
                    let seeds: Vec<u64> =
                        mine.clone().map(|j| image_seed(fit.seed, epoch, b * fit.batch_size + j)).collect();
                    let aug = Augment { crop: fit.crop, shift: fit.shift, lighting: fit.lighting, erase: fit.erase };
                    let (x, labels) = if fit.augment {
                        make_batch_seeded(train, &chunk[mine.clone()], fit.canvas, &aug, norm, &seeds)
                    } else {
                        make_batch(train, &chunk[mine.clone()], fit.canvas, 0, norm, None)
                    };
                    let dropout_seeds = seeds.iter().map(|s| !s).collect();
                    if tx.send((x, labels, dropout_seeds, chunk.len())).is_err() {
                        return;
                    }
                }
            });
            // Owned here, so that stopping early drops it and unblocks the loader.
            let rx = rx;
            for (b, (x, labels, dropout_seeds, n)) in rx.iter().enumerate() {
                lr = fit.lr_at((epoch - 1) * steps_per_epoch + b, total, steps_per_epoch, &state.history);
                let dims = [labels.len(), c, fit.canvas, fit.canvas];
                let step = learner.step(x, dims, &labels, &dropout_seeds, lr);
                if !step.loss.is_finite() {
                    return Err(TrainError::NonFinite { loss: step.loss, epoch, step: b + 1 });
                }
                if fit.swa.is_some_and(|s| epoch > s.start && s.averages_after(b + 1, steps_per_epoch)) {
                    learner.add_to_average(state.swa_count)?;
                    state.swa_count += 1;
                }
                loss_sum += step.loss as f64 * n as f64;
                correct += step.hits;
                seen += n;
                let event = Event::Step(b + 1, step.loss, step.hits as f64 / n as f64, lr);
                if agree(run, usize::from(events(event).is_break())) == 1 {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if !result? {
            return Ok((model, state));
        }
        let train_secs = started.elapsed().as_secs_f64();
        let mut last_weights_test_acc = None;
        if epoch == planned && (state.swa_count > 0 || fit.precise_bn) {
            last_weights_test_acc = Some(test_on(&*learner).acc);
            if state.swa_count > 0 {
                if root {
                    st::write(&dir.unaveraged(), &learner.state_dict(), &weights_meta, Dtype::F32)?;
                }
                learner.use_average()?;
            }
            let order: Vec<usize> = (0..train.len()).collect();
            let mut batches = order.chunks(fit.batch_size).map(|chunk| {
                let (x, _) = make_batch(train, chunk, fit.canvas, 0, norm, None);
                (x, [chunk.len(), c, fit.canvas, fit.canvas])
            });
            learner.recalibrate_bn(&mut batches)?;
        }
        let weights = learner.state_dict();
        model.load_state_dict(&weights, Strict::Yes)?;
        let ev = test_on(&*learner);
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss: ev.loss,
            test_acc: ev.acc,
            lr,
            images_per_s: seen as f64 / train_secs,
            seconds: started.elapsed().as_secs_f64(),
            last_weights_test_acc,
            planned_epochs: fit.time_budget_s.map(|_| planned),
        };
        state.epochs_done = epoch;
        state.history.push(m.clone());
        if m.test_acc > state.best_acc {
            state.best_acc = m.test_acc;
            if root {
                st::write(&dir.best(), &weights, &weights_meta, Dtype::F32)?;
            }
        }
        if root {
            save_last(dir, model.config(), weights, learner.optimizer_state(), &state, &pre)?;
            let lines: String =
                state.history.iter().map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n").collect();
            st::write_atomic(&dir.metrics(), lines.as_bytes())?;
            write_pictures(dir, &state, &ev, test);
        }
        if agree(run, usize::from(events(Event::EpochEnd(&m)).is_break())) == 1 {
            break;
        }
    }
    Ok((model, state))
}

/// Rank 0's `value` in every process (the value itself in one process).
fn agree(run: &RunOptions, value: usize) -> usize {
    let Some(p) = &run.parallel else { return value };
    let mut v = [value as f32];
    p.group.broadcast_f32(0, &mut v);
    v[0] as usize
}

/// `curves.png` (loss and accuracy per epoch) and `confusion.png` (of the epoch just evaluated).
/// Pictures are a convenience: failing to write one does not stop training.
fn write_pictures(dir: &RunDir, state: &TrainState, ev: &Evaluation, test: &Dataset) {
    let rows: Vec<_> =
        state.history.iter().map(|m| (m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc)).collect();
    let title = format!("best test accuracy {:.2}%", state.best_acc * 100.0);
    let _ = crate::plot::training_curves(&rows, &title).save(&dir.0.join("curves.png"));
    let epoch = state.history.last().map_or(0, |m| m.epoch);
    let title = format!("epoch {epoch}: test accuracy {:.2}%", ev.acc * 100.0);
    let _ = crate::plot::confusion(&ev.confusion, &test.classes, &title).save(&dir.0.join("confusion.png"));
}
