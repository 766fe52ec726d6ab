//! Shape rules: element counts with limits, broadcasting, reductions.

use crate::error::{GpuError, GpuResult};

/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;
/// Most elements a tensor may have.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// Checks a shape from a guest and returns it with its element count.
pub fn checked(shape: &[u32]) -> GpuResult<(Vec<usize>, usize)> {
    if shape.len() > MAX_RANK {
        return Err(GpuError::invalid(format!(
            "a tensor has at most {MAX_RANK} dimensions; got {}",
            shape.len()
        )));
    }
    let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or_else(|| GpuError::invalid(format!("shape {shape:?} has too many elements")))?;
    Ok((dims, count))
}

/// The number of elements of `shape`.
pub fn elements(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The broadcast shape of `a` and `b` (NumPy rules), or an error naming both.
pub fn broadcast(op: &str, a: &[usize], b: &[usize]) -> GpuResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(GpuError::invalid(format!(
                    "`{op}`: shapes {a:?} and {b:?} do not broadcast"
                )));
            }
        };
    }
    Ok(out)
}

/// Strides of `shape` (row-major) aligned to `out` for broadcasting: 0 where broadcast.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let offset = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        strides[i + offset] = if shape[i] == 1 && out[i + offset] != 1 {
            0
        } else {
            stride
        };
        stride *= shape[i];
    }
    strides
}

/// Splits `shape` around `axis` into (outer, axis length, inner) element counts.
pub fn around_axis(op: &str, shape: &[usize], axis: u32) -> GpuResult<(usize, usize, usize)> {
    let axis = axis as usize;
    if axis >= shape.len() {
        return Err(GpuError::invalid(format!(
            "`{op}`: axis {axis} is out of range for shape {shape:?}"
        )));
    }
    Ok((
        elements(&shape[..axis]),
        shape[axis],
        elements(&shape[axis + 1..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast("add", &[2, 3], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(
            broadcast("add", &[4, 1, 3], &[2, 1]).unwrap(),
            vec![4, 2, 3]
        );
        assert_eq!(broadcast("add", &[], &[5]).unwrap(), vec![5]);
        assert!(broadcast("add", &[2, 3], &[2]).is_err());
        assert_eq!(broadcast_strides(&[3], &[2, 3]), vec![0, 1]);
        assert_eq!(broadcast_strides(&[2, 1], &[4, 2, 3]), vec![0, 1, 0]);
    }

    #[test]
    fn shapes_are_bounded() {
        assert_eq!(checked(&[2, 3]).unwrap(), (vec![2, 3], 6));
        assert_eq!(checked(&[]).unwrap().1, 1, "a scalar has one element");
        assert!(checked(&[1; 9]).is_err());
        assert!(checked(&[u32::MAX, u32::MAX]).is_err());
    }
}
