//! The shape of a convolution over a batch, which every convolution kernel and the dispatcher
//! (`conv`) take: its own file so that the kernels need not import the dispatcher that imports them.

/// Shape of a convolution over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel side (odd).
    pub k: usize,
}

impl ConvShape {
    /// Rows of the weight matrix: k·k·cin.
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.ci
    }

    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Output rows per im2col block: a few megabytes of patches, at least 512 rows so that the
    /// weights are streamed for enough rows.
    pub(crate) fn block_rows(&self) -> usize {
        ((1usize << 21) / self.kdim().max(1)).clamp(512, 2048)
    }

    /// How the n·h·w output rows are split: (rows per thread, whether the GEMM itself runs on all
    /// threads). Each thread takes a contiguous range of rows; when that leaves fewer than 256 rows
    /// per thread (the 4x4 and 2x2 maps of small inputs), streaming the weights dominates, so one
    /// range goes through a parallel GEMM instead.
    pub(crate) fn split(&self) -> (usize, bool) {
        let total = self.n * self.hw();
        let threads = rayon::current_num_threads().max(1);
        let per = total.div_ceil(threads).max(1);
        if per >= 256 || threads == 1 { (per, false) } else { (total.max(1), true) }
    }
}
