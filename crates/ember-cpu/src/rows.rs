//! Row gathers and weighted scatter-adds: tokens to the experts that serve them and back.

use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult};

fn row_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// Rows `row_ids` of `x`, in that order.
pub fn gather_rows(x: &CpuTensor, row_ids: &[u32]) -> BackendResult<CpuTensor> {
    let mut out = CpuTensor::zeros(row_ids.len(), x.cols())?;
    for (i, &r) in row_ids.iter().enumerate() {
        let r = r as usize;
        if r >= x.rows() {
            return Err(row_err("gather_rows", format!("row {r} of {}", x.rows())));
        }
        out.row_mut(i).copy_from_slice(x.row(r));
    }
    Ok(out)
}

/// `out[row_ids[i]] += weights[i] * y[i]` for every row `i` of `y`, in order.
pub fn scatter_add_rows(
    out: &mut CpuTensor,
    y: &CpuTensor,
    row_ids: &[u32],
    weights: &[f32],
) -> BackendResult<()> {
    if y.rows() != row_ids.len() || weights.len() != row_ids.len() || y.cols() != out.cols() {
        return Err(row_err(
            "scatter_add_rows",
            format!(
                "{} rows of {} columns, {} row ids and {} weights into {} columns",
                y.rows(),
                y.cols(),
                row_ids.len(),
                weights.len(),
                out.cols()
            ),
        ));
    }
    for (i, (&r, &w)) in row_ids.iter().zip(weights).enumerate() {
        let r = r as usize;
        if r >= out.rows() {
            return Err(row_err("scatter_add_rows", format!("row {r} of {}", out.rows())));
        }
        for (o, &v) in out.row_mut(r).iter_mut().zip(y.row(i)) {
            *o += v * w;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_then_scatter_adds_weighted_rows_back() {
        let x = CpuTensor::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let picked = gather_rows(&x, &[2, 0, 2]).unwrap();
        assert_eq!(picked.as_slice(), &[5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
        let mut out = CpuTensor::zeros(3, 2).unwrap();
        scatter_add_rows(&mut out, &picked, &[2, 0, 1], &[0.5, 2.0, -1.0]).unwrap();
        assert_eq!(out.as_slice(), &[2.0, 4.0, -5.0, -6.0, 2.5, 3.0]);
        assert!(gather_rows(&x, &[3]).is_err());
        assert!(scatter_add_rows(&mut out, &picked, &[0, 1], &[1.0, 1.0]).is_err());
        assert!(scatter_add_rows(&mut out, &picked, &[0, 1, 9], &[1.0; 3]).is_err());
    }
}
