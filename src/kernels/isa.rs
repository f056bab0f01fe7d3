//! The instruction set the kernels run on, chosen once per process: the best one this CPU has, or
//! the one named by the environment variable `VGG_ISA`, so that every path can be tested on any
//! machine that has it (`VGG_ISA=generic cargo test` runs the portable loops on an AVX2 CPU).
//!
//! Portable kernels become per-path copies through [`dispatch!`]; the hand-written micro-kernels
//! (packed and implicit GEMM, the half-precision widening) match on [`active`] themselves. The GEMM
//! of the `gemm` crate (built with its AVX-512 kernels) keeps its own runtime dispatch whatever is
//! chosen here.

use std::str::FromStr;
use std::sync::OnceLock;

/// A kernel path, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust loops that compile for any target.
    Generic,
    /// x86-64 with AVX2, FMA and F16C (256-bit vectors; every AVX2 CPU has the other two).
    Avx2,
    /// x86-64 with AVX-512 F, BW, DQ and VL besides AVX2 and FMA (512-bit vectors, 32 registers):
    /// Intel since Skylake-SP, AMD since Zen 4. Kernels without a 512-bit version take their AVX2 one.
    Avx512,
}

/// `VGG_ISA` names a path that does not exist or that this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// Not a path of this build.
    #[error("unknown instruction set '{0}' (this build has: {list})", list = names(Isa::ALL.into_iter()))]
    Unknown(String),
    /// A path this CPU cannot run.
    #[error("this CPU lacks {0} (it has: {list})", list = names(Isa::supported()))]
    Unsupported(&'static str),
}

/// "avx2, generic": the paths' names for a message.
fn names(paths: impl Iterator<Item = Isa>) -> String {
    paths.map(Isa::name).collect::<Vec<_>>().join(", ")
}

impl Isa {
    /// Every path of this build, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Generic];

    /// The name `VGG_ISA` and `vgg bench` use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            Isa::Avx2 => cpu_has_avx2_fma(),
            Isa::Avx512 => cpu_has_avx2_fma() && cpu_has_avx512(),
        }
    }

    /// The paths this CPU can run, best first.
    pub fn supported() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_supported())
    }

    /// The best path this CPU can run.
    pub fn detect() -> Isa {
        Isa::supported().next().unwrap_or(Isa::Generic)
    }

    /// `name` as a path this CPU can run.
    pub fn require(name: &str) -> Result<Isa, IsaError> {
        let isa: Isa = name.parse()?;
        if isa.is_supported() { Ok(isa) } else { Err(IsaError::Unsupported(isa.name())) }
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|isa| isa.name() == wanted).ok_or_else(|| IsaError::Unknown(s.to_string()))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that forces a path.
pub const ENV: &str = "VGG_ISA";

/// The process's choice: `VGG_ISA` when set (an error when it names no path this CPU runs), else
/// the best path of the CPU. Read once.
pub fn selected() -> Result<Isa, IsaError> {
    static SELECTED: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    SELECTED
        .get_or_init(|| match std::env::var(ENV) {
            Ok(name) if !name.trim().is_empty() => Isa::require(&name),
            _ => Ok(Isa::detect()),
        })
        .clone()
}

/// The path the kernels take. A `VGG_ISA` in error leaves them on the portable loops; the binary
/// and [`crate::engine::Engine`]'s constructors report that error before any kernel runs.
pub fn active() -> Isa {
    selected().unwrap_or(Isa::Generic)
}

/// Defines a kernel entry point that runs a portable body compiled for the path [`active`] chose:
/// `dispatch! { fn name(arg: Type, ...) -> Ret = body; }` where `body` is an `#[inline(always)]`
/// function of the same arguments written with no intrinsics. The body is compiled three times, for
/// AVX-512 (F, BW, DQ, VL), for AVX2 + FMA + F16C and for the baseline, so the compiler vectorises
/// its loops over 16, 8 or 4 lanes; each path is taken only on a CPU that has it. This is the one
/// place that turns the chosen path into target features; hand-written intrinsics (the GEMM
/// micro-kernels) branch on [`active`] themselves.
macro_rules! dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn on_avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn on_avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::kernels::isa::active() {
                    // SAFETY: `active` returns only a path this CPU has (`Isa::is_supported`).
                    $crate::kernels::isa::Isa::Avx512 => return unsafe { on_avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::isa::Isa::Avx2 => return unsafe { on_avx2($($arg),*) },
                    $crate::kernels::isa::Isa::Generic => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// The CPU's model name with its family and model numbers, as benchmark figures name it
/// ("Intel(R) Xeon(R) Processor (family 6 model 207)"); the architecture alone where
/// `/proc/cpuinfo` is not there.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(family), Some(model)) => format!("{name} (family {family} model {model})"),
        (Some(name), _, _) => name,
        _ => std::env::consts::ARCH.to_string(),
    }
}

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
        }
        assert_eq!(" AVX2 ".parse::<Isa>(), Ok(Isa::Avx2));
        assert_eq!("sse9".parse::<Isa>(), Err(IsaError::Unknown("sse9".into())));
        assert!(IsaError::Unknown("sse9".into()).to_string().contains("avx512, avx2, generic"));
    }

    #[test]
    fn the_generic_path_runs_everywhere_and_is_the_floor() {
        assert!(Isa::Generic.is_supported());
        assert_eq!(Isa::require("generic"), Ok(Isa::Generic));
        assert_eq!(Isa::supported().last(), Some(Isa::Generic));
        assert!(Isa::detect().is_supported());
        // A path the CPU lacks is an error naming it, never a silent fallback.
        if !Isa::Avx2.is_supported() {
            assert_eq!(Isa::require("avx2"), Err(IsaError::Unsupported("avx2")));
        }
        if !Isa::Avx512.is_supported() {
            assert_eq!(Isa::require("avx512"), Err(IsaError::Unsupported("avx512")));
        }
        // Each path needs the ones below it: a CPU with AVX-512 has AVX2 and FMA.
        assert!(!Isa::Avx512.is_supported() || Isa::Avx2.is_supported());
    }
}
