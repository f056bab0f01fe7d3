//! Learning-rate schedules, as PyTorch's schedulers move the rate.

use super::EpochMetrics;

/// How the learning rate moves over training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// `torch.optim.lr_scheduler.OneCycleLR` defaults: cosine up from peak/25 over 30% of the
    /// steps, then cosine down to peak/25/1e4.
    OneCycle,
    /// Divide by 10 every `step` epochs.
    Step {
        /// Epochs between divisions.
        step: usize,
    },
    /// Divide by 10 at each of these epochs (`MultiStepLR`).
    MultiStep {
        /// Epochs (0-based counts of finished epochs) at which the rate drops.
        milestones: Vec<usize>,
    },
    /// Divide by 10 when the test accuracy has not improved for `patience` epochs, as the paper
    /// did with its validation accuracy (`ReduceLROnPlateau(mode="max", threshold=1e-4)`).
    Plateau {
        /// Epochs without improvement tolerated.
        patience: usize,
    },
}

/// `onecycle`, `cosine`, `constant`, `step:N`, `multistep:E1,E2,...` or `plateau:P`.
impl std::str::FromStr for Schedule {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            crate::parse::ParseError::new(
                "schedule",
                s,
                "onecycle, cosine, constant, step:N, multistep:E1,E2,... or plateau:P",
            )
        };
        match s {
            "onecycle" => return Ok(Schedule::OneCycle),
            "cosine" => return Ok(Schedule::Cosine),
            "constant" => return Ok(Schedule::Constant),
            _ => {}
        }
        let (kind, arg) = s.split_once(':').ok_or_else(err)?;
        match kind {
            "step" => arg.parse().map(|step| Schedule::Step { step }).map_err(|_| err()),
            "multistep" => crate::parse::list(arg).map(|milestones| Schedule::MultiStep { milestones }).ok_or_else(err),
            "plateau" => arg.parse().map(|patience| Schedule::Plateau { patience }).map_err(|_| err()),
            _ => Err(err()),
        }
    }
}

/// How many times `ReduceLROnPlateau(mode="max", factor, patience, threshold=1e-4 relative)` has cut
/// the rate after the accuracies of `history`.
pub fn plateau_cuts(accuracies: &[f64], patience: usize) -> i32 {
    let (mut best, mut bad, mut cuts) = (f64::NEG_INFINITY, 0usize, 0);
    for &a in accuracies {
        if a > best * (1.0 + 1e-4) || best == f64::NEG_INFINITY {
            best = a;
            bad = 0;
        } else {
            bad += 1;
        }
        if bad > patience {
            cuts += 1;
            bad = 0;
        }
    }
    cuts
}

impl Schedule {
    /// The rate at `step` of `total` for the peak rate `peak` (after `warmup_epochs` of linear
    /// warm-up, for the cosine schedule), after the epochs of `history`.
    pub fn lr_at(
        &self,
        peak: f64,
        warmup_epochs: f64,
        step: usize,
        total: usize,
        steps_per_epoch: usize,
        history: &[EpochMetrics],
    ) -> f64 {
        let t = step as f64 / total.max(1) as f64;
        match self {
            Schedule::Constant => peak,
            Schedule::Cosine => {
                let warm = (warmup_epochs * steps_per_epoch as f64) as usize;
                if step < warm {
                    peak * (step + 1) as f64 / warm as f64
                } else {
                    cosine(peak, 0.0, (step - warm) as f64 / (total - warm).max(1) as f64)
                }
            }
            Schedule::OneCycle => {
                let start = peak / 25.0;
                let end = start / 1e4;
                let up = 0.3;
                if t < up { cosine(start, peak, t / up) } else { cosine(peak, end, (t - up) / (1.0 - up)) }
            }
            Schedule::Step { step: s } => peak * 0.1f64.powi((step / steps_per_epoch / s.max(&1)) as i32),
            Schedule::MultiStep { milestones } => {
                let epoch = step / steps_per_epoch.max(1);
                peak * 0.1f64.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            Schedule::Plateau { patience } => {
                let acc: Vec<f64> = history.iter().map(|m| m.test_acc).collect();
                peak * 0.1f64.powi(plateau_cuts(&acc, *patience))
            }
        }
    }
}

/// Half a cosine from `a` (at `p = 0`) to `b` (at `p = 1`).
pub(crate) fn cosine(a: f64, b: f64, p: f64) -> f64 {
    b + (a - b) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules_read_from_their_written_forms() {
        assert_eq!("onecycle".parse(), Ok(Schedule::OneCycle));
        assert_eq!("step:30".parse(), Ok(Schedule::Step { step: 30 }));
        assert_eq!("multistep:30, 60".parse(), Ok(Schedule::MultiStep { milestones: vec![30, 60] }));
        assert_eq!("plateau:2".parse(), Ok(Schedule::Plateau { patience: 2 }));
        for bad in ["cosin", "step:", "step:x", "multistep:1,x", "plateau", "warm:3"] {
            let err = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("unknown schedule '{bad}'")) && err.contains("multistep:E1,E2"), "{err}");
        }
    }
}
