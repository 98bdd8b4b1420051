// std::vector whose resize() leaves new elements uninitialised (default-initialised), for output buffers that
// are written in full right after (a next-token distribution of 14,000 entries is 225 KB: zero-filling it
// first would be one more pass over memory that the decoder then overwrites).
#pragma once
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace irforge {

template <class T>
struct DefaultInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() noexcept = default;
  template <class U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};

template <class T>
using RawVector = std::vector<T, DefaultInitAllocator<T>>;

}  // namespace irforge
