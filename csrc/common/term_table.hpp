// A string -> dense id hash table (open addressing, linear probing, power-of-two slots, load <= 1/2).
// Its arrays are exactly what an index file stores, so a loaded index looks terms up in place.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace irforge {

inline uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

// Lookup over raw arrays: slots hold id + 1 (0 is empty); offsets has n + 1 entries into bytes.
inline int64_t table_find(std::string_view key, const uint32_t* slots, uint64_t n_slots, const uint64_t* offsets,
                          const char* bytes) {
  if (n_slots == 0) return -1;
  const uint64_t mask = n_slots - 1;
  for (uint64_t i = fnv1a(key) & mask, probes = 0; probes < n_slots; i = (i + 1) & mask, ++probes) {
    const uint32_t s = slots[i];
    if (s == 0) return -1;
    const uint64_t a = offsets[s - 1], b = offsets[s];
    if (b - a == key.size() && std::memcmp(bytes + a, key.data(), key.size()) == 0) return s - 1;
  }
  return -1;
}

// Builds the slot array for n strings given by offsets/bytes (as TermTable lays them out). Returns false
// if two strings are equal (a corrupt vocabulary).
inline bool make_slots(const uint64_t* offsets, const char* bytes, size_t n, std::vector<uint32_t>& slots) {
  size_t size = 16;
  while (size < 2 * n) size *= 2;
  slots.assign(size, 0);
  const uint64_t mask = size - 1;
  for (size_t id = 0; id < n; ++id) {
    const std::string_view key(bytes + offsets[id], offsets[id + 1] - offsets[id]);
    uint64_t i = fnv1a(key) & mask;
    while (slots[i] != 0) {
      const uint32_t s = slots[i];
      if (offsets[s] - offsets[s - 1] == key.size() && std::memcmp(bytes + offsets[s - 1], key.data(), key.size()) == 0)
        return false;
      i = (i + 1) & mask;
    }
    slots[i] = static_cast<uint32_t>(id + 1);
  }
  return true;
}

class TermTable {
 public:
  TermTable() : slots_(16, 0), offsets_{0} {}

  size_t size() const { return offsets_.size() - 1; }
  std::string_view term(uint32_t id) const {
    return std::string_view(bytes_.data() + offsets_[id], offsets_[id + 1] - offsets_[id]);
  }
  int64_t find(std::string_view key) const {
    return table_find(key, slots_.data(), slots_.size(), offsets_.data(), bytes_.data());
  }
  // Returns the id of key, adding it if new; *added tells which.
  uint32_t intern(std::string_view key, bool* added = nullptr) {
    const uint64_t mask = slots_.size() - 1;
    uint64_t i = fnv1a(key) & mask;
    while (true) {
      const uint32_t s = slots_[i];
      if (s == 0) break;
      const uint64_t a = offsets_[s - 1], b = offsets_[s];
      if (b - a == key.size() && std::memcmp(bytes_.data() + a, key.data(), key.size()) == 0) {
        if (added) *added = false;
        return s - 1;
      }
      i = (i + 1) & mask;
    }
    const uint32_t id = static_cast<uint32_t>(size());
    bytes_.append(key.data(), key.size());
    offsets_.push_back(bytes_.size());
    slots_[i] = id + 1;
    if (added) *added = true;
    if (2 * size() > slots_.size()) rehash(slots_.size() * 2);
    return id;
  }

  const std::vector<uint32_t>& slots() const { return slots_; }
  const std::vector<uint64_t>& offsets() const { return offsets_; }
  const std::string& bytes() const { return bytes_; }

 private:
  std::vector<uint32_t> slots_;
  std::vector<uint64_t> offsets_;
  std::string bytes_;

  void rehash(size_t n) {
    std::vector<uint32_t> fresh(n, 0);
    const uint64_t mask = n - 1;
    for (uint32_t id = 0; id < size(); ++id) {
      uint64_t i = fnv1a(term(id)) & mask;
      while (fresh[i] != 0) i = (i + 1) & mask;
      fresh[i] = id + 1;
    }
    slots_.swap(fresh);
  }
};

}  // namespace irforge
