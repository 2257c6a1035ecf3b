// Sums whose order of additions is fixed, wherever the data lie.
#pragma once

#include "views.hpp"

namespace rnnfast {

// m's rows added to out one after another. Eigen's colwise().sum() picks its order by where
// the data lie in memory, so the same numbers could round differently from one call to the
// next; this order is fixed, and training runs repeat bit for bit.
template <typename T, typename M>
void add_rows(T* out, const M& m) {
  RowVectorMap<T> s(out, m.cols());
  for (Index r = 0; r < m.rows(); ++r) s += m.row(r);
}

// Σ v_j², element after element: a fixed order, for the reason given at add_rows.
template <typename V>
typename V::Scalar sum_of_squares(const V& v) {
  typename V::Scalar s(0);
  for (Index j = 0; j < v.size(); ++j) s += v(j) * v(j);
  return s;
}

}  // namespace rnnfast
