// Views of the arrays a layer call reads and writes, NumPy's buffers seen in place: row-major
// Eigen maps, and the (B, W) slice of a (B, T, W) array at one timestep.
//
// Letters: B = batch, T = timesteps, D = input features, H = hidden units,
// G = gates per cell (RNN 1, LSTM 4, GRU 3). Arrays are batch-first and C-ordered,
// so a (B, T, W) array flattens to (B*T, W) rows ordered r = b*T + t.
#pragma once

#include <Eigen/Core>

namespace rnnfast {

using Index = Eigen::Index;

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <typename T>
using RowVectorMap = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;
template <typename T>
using ConstRowVectorMap = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

// The (B, W) slice at one timestep of a (B, T, W) array: its rows are T*W apart.
template <typename T>
using StepMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstStepMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;

template <typename T>
StepMap<T> at_step(T* base, Index B, Index T_, Index W, Index t) {
  return StepMap<T>(base + t * W, B, W, Eigen::OuterStride<>(T_ * W));
}
template <typename T>
ConstStepMap<T> at_step(const T* base, Index B, Index T_, Index W, Index t) {
  return ConstStepMap<T>(base + t * W, B, W, Eigen::OuterStride<>(T_ * W));
}

// p + offset, or nullptr for a buffer that is not there (nullptr + n is undefined behaviour).
template <typename T>
T* rows_from(T* p, Index offset) {
  return p == nullptr ? nullptr : p + offset;
}

}  // namespace rnnfast
