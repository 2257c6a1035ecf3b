// The element-wise part of a step: σ, and running a cell's step a SIMD packet at a time.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "views.hpp"

namespace rnnfast {

// σ(a) = (1 + tanh(a/2)) / 2, as an expression, or in place. Equal to 1 / (1 + exp(-a)), but no
// intermediate can overflow, so a saturated gate is exactly 0 or 1 and never inf or NaN, in
// float32 too. The one definition for every cell and path.
template <typename Derived>
auto sigmoid(const Eigen::ArrayBase<Derived>& a) {
  using T = typename Derived::Scalar;
  return T(0.5) * (T(0.5) * a).tanh() + T(0.5);
}

template <typename Block>
void sigmoid_in_place(Block&& a) {
  a = sigmoid(a.array()).matrix();
}

// Calls step(j, tag, n) over a row of H elements: packets of P, the SIMD width (tag:
// integral_constant<int, P>, n = P), and then the rest, if any (tag: integral_constant<int,
// Eigen::Dynamic>). A cell's step written for Eigen arrays of tag's size then runs a packet at a
// time with every intermediate in registers: one pass over a row where a chain of Eigen
// expressions over (B, H) blocks makes one pass each.
//
// Used for rows up to kPacketRowsUpTo units. Measured against the chains, LSTM step medians of
// alternated rounds at 2 threads: H = 64 (long, (16, 1000, 32, 64)) forward 0.96, backward
// 0.98; H = 128 (small) 0.99, 0.99; H = 256 (medium) 0.94, 0.98; but H = 512 (large) 1.05,
// 1.01: there the chains, each streaming a few arrays, are faster than one loop reading and
// writing eleven rows at once.
constexpr Index kPacketRowsUpTo = 256;

// For the lambdas given to by_packets: GCC left the LSTM backward's out of line (a call per
// packet, its captures reloaded through the stack each time).
#if defined(__GNUC__)
#define RNNFAST_INLINE_LAMBDA __attribute__((always_inline))
#else
#define RNNFAST_INLINE_LAMBDA
#endif

// For a function that runs by_packets over a step's rows: every call in it inlined, Eigen's
// tanh (generic_fast_tanh_float, under every σ and tanh) included, which GCC otherwise kept out
// of line in forward's steps; no vector register survives a call, so each packet's
// intermediates went through the stack around each of its five calls.
#if defined(__GNUC__)
#define RNNFAST_FLATTEN __attribute__((noinline, flatten))
#else
#define RNNFAST_FLATTEN
#endif

template <typename T, typename Step>
void by_packets(Index H, Step&& step) {
  constexpr int P = Eigen::internal::packet_traits<T>::size;
  const Index whole = H / P * P;
  for (Index j = 0; j < whole; j += P) step(j, std::integral_constant<int, P>(), Index(P));
  if (whole < H) step(whole, std::integral_constant<int, Eigen::Dynamic>(), H - whole);
}

}  // namespace rnnfast
