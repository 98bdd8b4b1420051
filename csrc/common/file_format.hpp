// Sectioned binary files: a header (magic, format version, file size, section table, header checksum)
// followed by 64-byte aligned sections, each with its own checksum. Writing goes to a temporary file
// that is fsynced and renamed over the target, so a crash never leaves a half-written index behind.
// Reading maps or reads the whole file and checks every size and checksum before handing out a byte.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "checksum.hpp"
#include "huge_pages.hpp"

namespace irforge {

struct IoError : std::runtime_error {  // mapped to OSError by the bindings
  using std::runtime_error::runtime_error;
};
struct FormatError : std::runtime_error {  // a file that is not a valid index; mapped to ValueError
  using std::runtime_error::runtime_error;
};

struct SectionEntry {
  uint32_t id;
  uint32_t reserved;
  uint64_t offset;
  uint64_t size;
  uint64_t checksum;
};

inline constexpr size_t kMagicSize = 8;
inline constexpr size_t kSectionAlign = 64;

// Header layout: magic[8] | u32 version | u32 n_sections | u64 file_size | SectionEntry[n] | u64 header_checksum
inline size_t header_size(size_t n_sections) {
  return kMagicSize + 4 + 4 + 8 + n_sections * sizeof(SectionEntry) + 8;
}

class SectionWriter {
 public:
  // Adds a section; the bytes are copied so callers may pass temporaries.
  void add(uint32_t id, const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    sections_.push_back({id, std::vector<unsigned char>(p, p + size)});
  }
  template <class T>
  void add_vector(uint32_t id, const std::vector<T>& v) { add(id, v.data(), v.size() * sizeof(T)); }

  // Writes magic/version/sections to `path` (the caller renames it into place) and fsyncs it.
  void write(const std::string& path, const char (&magic)[kMagicSize + 1], uint32_t version) const {
    const size_t n = sections_.size();
    std::vector<SectionEntry> table(n);
    uint64_t off = align(header_size(n));
    for (size_t i = 0; i < n; ++i) {
      const auto& s = sections_[i];
      table[i] = {s.id, 0, off, s.bytes.size(), checksum64(s.bytes.data(), s.bytes.size(), s.id)};
      off = align(off + s.bytes.size());
    }
    const uint64_t file_size = off;
    std::vector<unsigned char> header;
    auto put = [&](const void* p, size_t len) {
      const auto* b = static_cast<const unsigned char*>(p);
      header.insert(header.end(), b, b + len);
    };
    put(magic, kMagicSize);
    put(&version, 4);
    const uint32_t n32 = static_cast<uint32_t>(n);
    put(&n32, 4);
    put(&file_size, 8);
    put(table.data(), n * sizeof(SectionEntry));
    const uint64_t hsum = checksum64(header.data(), header.size());
    put(&hsum, 8);

    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw IoError("cannot open " + path + " for writing: " + std::strerror(errno));
    std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* f) { ::close(*f); });
    write_all(fd, header.data(), header.size(), path);
    uint64_t pos = header.size();
    static const unsigned char zeros[kSectionAlign] = {};
    for (size_t i = 0; i < n; ++i) {
      write_all(fd, zeros, table[i].offset - pos, path);
      write_all(fd, sections_[i].bytes.data(), sections_[i].bytes.size(), path);
      pos = table[i].offset + sections_[i].bytes.size();
    }
    write_all(fd, zeros, file_size - pos, path);
    if (::fsync(fd) != 0) throw IoError("fsync failed on " + path + ": " + std::strerror(errno));
  }

 private:
  struct Section {
    uint32_t id;
    std::vector<unsigned char> bytes;
  };
  std::vector<Section> sections_;

  static uint64_t align(uint64_t x) { return (x + kSectionAlign - 1) / kSectionAlign * kSectionAlign; }
  static void write_all(int fd, const void* p, size_t len, const std::string& path) {
    const auto* b = static_cast<const char*>(p);
    while (len > 0) {
      ssize_t w = ::write(fd, b, len);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IoError("write failed on " + path + ": " + std::strerror(errno));
      }
      b += w;
      len -= static_cast<size_t>(w);
    }
  }
};

// An opened, validated file. Sections are views into one buffer (mmap'ed or read).
class SectionFile {
 public:
  // Accepts format versions [oldest, version] (oldest 0: exactly `version`).
  SectionFile(const std::string& path, const char (&magic)[kMagicSize + 1], uint32_t version, bool use_mmap,
              bool verify_checksums, uint32_t oldest = 0)
      : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw IoError("cannot stat " + path + ": " + std::strerror(errno));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ < header_size(0)) {
      ::close(fd);
      throw FormatError(path + " is not an irforge index: " + std::to_string(size_) + " bytes is too small");
    }
    if (use_mmap) {
      void* m = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      ::close(fd);
      if (m == MAP_FAILED) throw IoError("cannot mmap " + path + ": " + std::strerror(errno));
      map_ = m;
      data_ = static_cast<const unsigned char*>(m);
    } else {
      buffer_.resize(size_);
      size_t got = 0;
      while (got < size_) {
        ssize_t r = ::read(fd, buffer_.data() + got, size_ - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          ::close(fd);
          throw IoError("read failed on " + path);
        }
        got += static_cast<size_t>(r);
      }
      ::close(fd);
      data_ = buffer_.data();
    }
    parse(magic, version, oldest == 0 ? version : oldest, verify_checksums);
  }
  ~SectionFile() {
    if (map_ != nullptr) ::munmap(map_, size_);
  }
  SectionFile(const SectionFile&) = delete;
  SectionFile& operator=(const SectionFile&) = delete;

  // The bytes of section `id`, checked to hold a whole number of T. Throws if it is missing.
  template <class T>
  std::pair<const T*, size_t> get(uint32_t id, const char* name) const {
    for (const auto& e : table_) {
      if (e.id != id) continue;
      if (e.size % sizeof(T) != 0)
        throw FormatError(path_ + ": section " + name + " has " + std::to_string(e.size) +
                          " bytes, not a multiple of " + std::to_string(sizeof(T)));
      return {reinterpret_cast<const T*>(data_ + e.offset), e.size / sizeof(T)};
    }
    throw FormatError(path_ + ": section " + name + " is missing");
  }
  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  HugeVector<unsigned char> buffer_;  // a file read in full (huge pages: indexes are read at random)
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
  std::vector<SectionEntry> table_;
  uint32_t version_ = 0;

  void parse(const char (&magic)[kMagicSize + 1], uint32_t version, uint32_t oldest, bool verify) {
    if (std::memcmp(data_, magic, kMagicSize) != 0)
      throw FormatError(path_ + " is not an irforge index of this kind (bad magic bytes)");
    uint32_t ver, n;
    uint64_t file_size;
    std::memcpy(&ver, data_ + 8, 4);
    std::memcpy(&n, data_ + 12, 4);
    std::memcpy(&file_size, data_ + 16, 8);
    if (ver < oldest || ver > version)
      throw FormatError(path_ + ": format version " + std::to_string(ver) + " is not supported (expected " +
                        (oldest == version ? std::to_string(version)
                                           : std::to_string(oldest) + " to " + std::to_string(version)) + ")");
    version_ = ver;
    if (n > 1024 || header_size(n) > size_)
      throw FormatError(path_ + ": corrupt header (section count " + std::to_string(n) + ")");
    if (file_size != size_)
      throw FormatError(path_ + ": file is " + std::to_string(size_) + " bytes but its header says " +
                        std::to_string(file_size) + " (truncated or appended to)");
    const size_t hlen = header_size(n) - 8;
    uint64_t stored;
    std::memcpy(&stored, data_ + hlen, 8);
    if (checksum64(data_, hlen) != stored) throw FormatError(path_ + ": header checksum mismatch (corrupt file)");
    table_.resize(n);
    std::memcpy(table_.data(), data_ + 24, n * sizeof(SectionEntry));
    for (const auto& e : table_) {
      if (e.offset % kSectionAlign != 0 || e.offset > size_ || e.size > size_ - e.offset)
        throw FormatError(path_ + ": section " + std::to_string(e.id) + " lies outside the file");
      if (verify && checksum64(data_ + e.offset, e.size, e.id) != e.checksum)
        throw FormatError(path_ + ": checksum mismatch in section " + std::to_string(e.id) + " (corrupt file)");
    }
  }
};

}  // namespace irforge
