#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"
#include "espresso/dp/sa.h"

#include <intel-ipsec-mb.h>

#include <stdexcept>

namespace espresso::dp {

namespace {

const char* arch_name(IMB_ARCH arch)
{
    switch (arch) {
    case IMB_ARCH_NOAESNI:
        return "NO-AESNI";
    case IMB_ARCH_SSE:
        return "SSE";
    case IMB_ARCH_AVX:
        return "AVX";
    case IMB_ARCH_AVX2:
        return "AVX2";
    case IMB_ARCH_AVX512:
        return "AVX512";
    default:
        return "unknown";
    }
}

std::string describe(IMB_ARCH arch, uint64_t features)
{
    std::string text = arch_name(arch);
    text += " (IPsec-MB ";
    text += imb_get_version_str();
    text += ";";
    const struct {
        uint64_t bit;
        const char* name;
    } names[] = {{IMB_FEATURE_AESNI, "AESNI"},     {IMB_FEATURE_PCLMULQDQ, "PCLMULQDQ"},
                 {IMB_FEATURE_AVX512_SKX, "AVX512"}, {IMB_FEATURE_VAES, "VAES"},
                 {IMB_FEATURE_VPCLMULQDQ, "VPCLMULQDQ"}, {IMB_FEATURE_SHANI, "SHANI"},
                 {IMB_FEATURE_GFNI, "GFNI"}};
    for (const auto& n : names) {
        if ((features & n.bit) == n.bit) {
            text += " ";
            text += n.name;
        }
    }
    text += ")";
    return text;
}

} // namespace

crypto_core::crypto_core()
{
    // The destructor does not run for a constructor that throws: free what was made on every way out.
    try {
        init();
    } catch (...) {
        release();
        throw;
    }
}

void crypto_core::init()
{
    jobs_ = new IMB_JOB[max_burst]();
    mgr_ = alloc_mb_mgr(0);
    if (mgr_ == nullptr) {
        throw std::runtime_error("IPsec-MB: alloc_mb_mgr failed");
    }
    IMB_ARCH arch = IMB_ARCH_NONE;
    init_mb_mgr_auto(mgr_, &arch);
    if (int err = imb_get_errno(mgr_); err != 0) {
        throw std::runtime_error(std::string("IPsec-MB: init_mb_mgr_auto failed: ") + imb_get_strerror(err));
    }
    description_ = describe(arch, mgr_->features);
    if ((mgr_->features & IMB_FEATURE_SHANI) != 0 && (arch == IMB_ARCH_AVX2 || arch == IMB_ARCH_AVX)) {
        sha_mgr_ = alloc_mb_mgr(0);
        if (sha_mgr_ == nullptr) {
            throw std::runtime_error("IPsec-MB: alloc_mb_mgr failed");
        }
        init_mb_mgr_sse(sha_mgr_);
        if (int err = imb_get_errno(sha_mgr_); err != 0) {
            throw std::runtime_error(std::string("IPsec-MB: init_mb_mgr_sse failed: ") + imb_get_strerror(err));
        }
        description_ += "; HMAC-SHA-1/224/256 on the SSE manager (SHA-NI)";
    }
}

void crypto_core::release() noexcept
{
    delete[] jobs_;
    jobs_ = nullptr;
    if (sha_mgr_ != nullptr) {
        free_mb_mgr(sha_mgr_);
        sha_mgr_ = nullptr;
    }
    if (mgr_ != nullptr) {
        free_mb_mgr(mgr_);
        mgr_ = nullptr;
    }
}

crypto_core::~crypto_core() { release(); }

void crypto_core::post(const sa_event& e) noexcept
{
    if (count_ == events_.size()) {
        ++lost_;
        return;
    }
    events_[(head_ + count_) % events_.size()] = e;
    ++count_;
}

void crypto_core::defer_outbound_counters()
{
    if (deferred_ == nullptr) {
        deferred_ = std::make_unique<deferred_count[]>(size_t{1} << deferred_bits);
        used_ = std::make_unique<uint16_t[]>(size_t{1} << deferred_bits);
    }
}

void crypto_core::write_back(deferred_count& slot) noexcept
{
    slot.sa->stats.add(sa_counter::packets, slot.packets);
    slot.sa->stats.add(sa_counter::bytes, slot.bytes);
    slot = {};
}

void crypto_core::flush_counters() noexcept
{
    // Every listed slot is taken: slots are freed only here (an eviction takes its slot again).
    for (unsigned i = 0; i < n_used_; ++i) {
        write_back(deferred_[used_[i]]);
    }
    n_used_ = 0;
}

size_t crypto_core::drain(std::span<sa_event> out) noexcept
{
    size_t n = 0;
    while (n < out.size() && count_ > 0) {
        out[n++] = events_[head_];
        head_ = (head_ + 1) % events_.size();
        --count_;
    }
    return n;
}

} // namespace espresso::dp
