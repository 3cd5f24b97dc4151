//! Matrix products on f32 slices through the `gemm` crate (the kernels burn-flex's own matmul
//! runs), behind views whose extents are checked against their slices, so that the one
//! `unsafe` call below can only touch memory the borrow checker handed us.

/// A read-only strided matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `[rows, cols]` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        let m = Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        };
        m.check();
        m
    }

    /// The transpose (a view; nothing moves).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn check(&self) {
        assert!(
            extent(self.rows, self.cols, self.row_stride, self.col_stride) <= self.data.len(),
            "matrix view [{}, {}] does not fit its {} elements",
            self.rows,
            self.cols,
            self.data.len()
        );
    }
}

/// A mutable row-major `[rows, cols]` matrix at the start of a slice.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(
            rows * cols <= data.len(),
            "matrix [{rows}, {cols}] does not fit its {} elements",
            data.len()
        );
        Self { data, rows, cols }
    }
}

/// Elements a strided view spans, from its first to its last element inclusive.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `dst = beta * lhs @ rhs`, or `dst += beta * lhs @ rhs` when `accumulate`, single-threaded
/// (the callers parallelise over heads and blocks).
pub fn matmul(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, beta: f32, accumulate: bool) {
    assert_eq!(lhs.rows, dst.rows, "matmul: lhs rows vs dst rows");
    assert_eq!(rhs.cols, dst.cols, "matmul: rhs cols vs dst cols");
    assert_eq!(lhs.cols, rhs.rows, "matmul: inner dimensions");
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.data[..m * n].fill(0.0);
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    #[allow(unsafe_code)]
    // SAFETY: every view was checked on construction to lie inside its slice (`Mat::check`,
    // `MatMut::new`), so gemm reads only `lhs.data` and `rhs.data` and writes only
    // `dst.data[..m * n]`; `dst` is a unique borrow, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_transposes_and_accumulation_match_the_definition() {
        let (m, k, n) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![7.0; m * n];
        matmul(
            MatMut::new(&mut c, m, n),
            Mat::new(&a, m, k),
            Mat::new(&b, k, n),
            1.0,
            false,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-6);
        }
        // b^T stored as [n, k], read through a transposed view; accumulate twice the product.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            MatMut::new(&mut c, m, n),
            Mat::new(&a, m, k),
            Mat::new(&bt, n, k).t(),
            2.0,
            true,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 3.0 * y).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_view_larger_than_its_slice_is_refused() {
        let a = vec![0.0; 5];
        let _ = Mat::new(&a, 2, 3);
    }
}
