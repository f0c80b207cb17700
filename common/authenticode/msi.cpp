#include "common/authenticode/msi.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <algorithm>
#include <cstring>

namespace p11relay::authenticode {

namespace {

constexpr size_t kMaxSignatureStream = 16u << 20;
// The MSI subject interface package's class id, {000C10F1-0000-0000-C000-000000000046}.
constexpr uint8_t kMsiSipGuid[16] = {0xf1, 0x10, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00,
                                     0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46};

bool is_signature_stream(const std::u16string& n) { return n == kMsiSignature || n == kMsiSignatureEx; }

void put_name(Hasher& h, const std::u16string& name) {
  Bytes b(2 * name.size());
  for (size_t i = 0; i < name.size(); ++i) {
    b[2 * i] = static_cast<uint8_t>(name[i]);
    b[2 * i + 1] = static_cast<uint8_t>(name[i] >> 8);
  }
  h.update(b);
}

void put32(Hasher& h, uint32_t v) {
  const uint8_t b[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
                        static_cast<uint8_t>(v >> 24)};
  h.update(b);
}

// The metadata of one entry as MsiDigitalSignatureEx hashes it.
void prehash_entry(Hasher& h, const ole::Entry& e) {
  if (e.type != ole::kRoot) put_name(h, e.name);
  if (e.type == ole::kStream)
    put32(h, static_cast<uint32_t>(e.size));
  else
    h.update(e.clsid);
  put32(h, e.state_bits);
  if (e.type != ole::kRoot) h.update(e.times);
}

// The children of a storage in the MSI order, without the root's signature streams.
Result<std::vector<uint32_t>> sorted_children(const ole::File& f, uint32_t storage) {
  ASSIGN_OR_RETURN(auto kids, f.children(storage));
  const auto& es = f.entries();
  std::sort(kids.begin(), kids.end(), [&es](uint32_t a, uint32_t b) { return msi_less(es[a].name, es[b].name); });
  if (storage == 0)
    kids.erase(std::remove_if(kids.begin(), kids.end(), [&es](uint32_t id) { return is_signature_stream(es[id].name); }),
               kids.end());
  return kids;
}

Status prehash_dir(const ole::File& f, uint32_t storage, Hasher& h, int depth) {
  if (depth > 32) return bad_request("MSI storages nested more than 32 deep");
  prehash_entry(h, f.entries()[storage]);
  ASSIGN_OR_RETURN(auto kids, sorted_children(f, storage));
  for (uint32_t id : kids) {
    if (f.entries()[id].type == ole::kStream) prehash_entry(h, f.entries()[id]);
    if (f.entries()[id].type == ole::kStorage) RETURN_IF_ERROR(prehash_dir(f, id, h, depth + 1));
  }
  return {};
}

// The digest being taken and how far it has come.
struct Feed {
  Hasher& h;
  const HashProgress& progress;
  uint64_t done = 0;
};

Status hash_dir(const ole::File& f, uint32_t storage, Feed& feed, int depth) {
  if (depth > 32) return bad_request("MSI storages nested more than 32 deep");
  ASSIGN_OR_RETURN(auto kids, sorted_children(f, storage));
  for (uint32_t id : kids) {
    const ole::Entry& e = f.entries()[id];
    if (e.type == ole::kStream)
      RETURN_IF_ERROR(f.read(e, [&feed](std::span<const uint8_t> p) -> Status {
        update_reporting(feed.h, p, feed.done, feed.progress);
        return {};
      }));
    if (e.type == ole::kStorage) RETURN_IF_ERROR(hash_dir(f, id, feed, depth + 1));
  }
  feed.h.update(f.entries()[storage].clsid);
  return {};
}

}  // namespace

bool is_ole(std::span<const uint8_t> head) {
  static const uint8_t magic[8] = {0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1};
  return head.size() >= 8 && std::memcmp(head.data(), magic, 8) == 0;
}

bool msi_less(const std::u16string& a, const std::u16string& b) {
  const size_t n = std::min(a.size(), b.size()) + 1;  // with the terminating NUL
  for (size_t i = 0; i < n; ++i) {
    const char16_t x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    if ((x & 0xff) != (y & 0xff)) return (x & 0xff) < (y & 0xff);
    if ((x >> 8) != (y >> 8)) return (x >> 8) < (y >> 8);
  }
  return a.size() > b.size();
}

Result<MsiDigest> msi_digest(const ole::File& file, HashAlg alg, bool extended, const HashProgress& progress) {
  MsiDigest d;
  d.alg = alg;
  Hasher h(alg);
  if (extended) {
    Hasher pre(alg);
    RETURN_IF_ERROR(prehash_dir(file, 0, pre, 0));
    d.prehash = pre.finish();
    h.update(d.prehash);
  }
  Feed feed{h, progress};
  RETURN_IF_ERROR(hash_dir(file, 0, feed, 0));
  d.digest = h.finish();
  return d;
}

Bytes msi_spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> digest) {
  return sip_spc_indirect_data_content(alg, digest, 1, kMsiSipGuid);
}

Result<MsiSignatures> msi_signatures(const ole::File& file) {
  MsiSignatures out;
  ASSIGN_OR_RETURN(auto kids, file.children(0));
  for (uint32_t id : kids) {
    const ole::Entry& e = file.entries()[id];
    if (e.type != ole::kStream) continue;
    if (e.name == kMsiSignature) {
      ASSIGN_OR_RETURN(out.signature, file.read_all(e, kMaxSignatureStream));
    } else if (e.name == kMsiSignatureEx) {
      ASSIGN_OR_RETURN(out.extended, file.read_all(e, 4096));
    }
  }
  return out;
}

Status msi_write_signed(const ole::File& file, std::span<const uint8_t> signed_data, std::span<const uint8_t> prehash,
                        const std::function<Status(std::span<const uint8_t>)>& out) {
  ASSIGN_OR_RETURN(ole::Node root, ole::copy_tree(file, 0));
  std::erase_if(root.children, [](const ole::Node& n) { return is_signature_stream(n.name); });
  auto add = [&root](const char16_t* name, std::span<const uint8_t> data) {
    ole::Node n;
    n.name = name;
    n.data.assign(data.begin(), data.end());
    n.size = n.data.size();
    root.children.push_back(std::move(n));
  };
  if (!prehash.empty()) add(kMsiSignatureEx, prehash);
  add(kMsiSignature, signed_data);
  return ole::write(file, root, out);
}

Result<VerifyReport> verify_msi(const ole::File& file) {
  ASSIGN_OR_RETURN(MsiSignatures sigs, msi_signatures(file));
  if (sigs.signature.empty()) return bad_request("file is not signed (no \\x05DigitalSignature stream)");
  auto digest_of = [&](HashAlg alg) -> Result<Bytes> {
    ASSIGN_OR_RETURN(MsiDigest d, msi_digest(file, alg, !sigs.extended.empty()));
    if (!sigs.extended.empty() && d.prehash != sigs.extended)
      return bad_request("MsiDigitalSignatureEx does not match the file's metadata");
    return std::move(d.digest);
  };
  return verify_with_nested(sigs.signature, digest_of, "the MSI's");
}

}  // namespace p11relay::authenticode
