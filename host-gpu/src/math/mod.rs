//! Fast CPU math shared by the CPU backend's ops and the models' forward pass: parallel matrix
//! products ([`gemm`]) and vectorized element-wise and row-wise functions ([`vector`]).

pub mod gemm;
pub mod vector;
