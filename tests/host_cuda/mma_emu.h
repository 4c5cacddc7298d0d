// Host versions of the PTX that kernels/cu/gemm_mma.cu keeps in its
// GEMM_MMA_EMULATED block, on top of cuda_emu.h (a block's threads as
// std::threads). Written from the PTX ISA's descriptions, not from the .cu:
//   ldmatrix.x4[.trans]: lane l names row l%8 of matrix l/8; lane l receives,
//     of matrix q, the 32-bit word l%4 of row l/4 (with .trans: the 16-bit
//     elements at column l/4 of rows 2(l%4) and 2(l%4)+1, low half first).
//   mma.m16n8k16 (bf16/f16) and m16n8k8 (tf32): each lane's A, B, C registers
//     hold the matrix elements the ISA's fragment tables give; D = A B + C
//     with exact products and FP32 sums.
//   cp.async: a thread's copies wait in commit groups and land only when
//     wait_group requires them (late), or at once (early): a kernel right
//     under either timing reads no slab before it lands and overwrites none
//     still being read.
// Every shared access is checked against the dynamic size the launcher asks
// for and for the alignment the instruction needs; the first violation is
// recorded (emu_error) instead of aborting the test process.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#define GEMM_MMA_EMULATED 1
using std::min;

inline constexpr int EMU_SMEM_MAX = 256 * 1024;
alignas(16) inline unsigned char emu_smem[EMU_SMEM_MAX];
inline int emu_smem_bytes = 0;  // what the launcher asks for
inline bool emu_late = true;
inline std::string emu_error;
inline std::mutex emu_error_lock;

#define GEMM_DYNAMIC_SMEM(name) unsigned char* name = emu_smem

inline void emu_fail(const char* what, long a, long b) {
    std::lock_guard<std::mutex> g(emu_error_lock);
    if (emu_error.empty()) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s (%ld, %ld) in thread %d of block (%d, %d)", what, a, b,
                      threadIdx.x, blockIdx.x, blockIdx.y);
        emu_error = buf;
    }
}

// addr .. addr+size inside the requested shared memory, aligned to align
inline bool emu_ok(unsigned addr, int size, int align) {
    if (addr % align) {
        emu_fail("misaligned shared access (addr, align)", addr, align);
        return false;
    }
    if ((long)addr + size > emu_smem_bytes) {
        emu_fail("shared access past the dynamic size (addr, size)", addr, emu_smem_bytes);
        return false;
    }
    return true;
}

inline unsigned smem_addr(const void* p) {
    return (unsigned)(static_cast<const unsigned char*>(p) - emu_smem);
}

// ---- cp.async ------------------------------------------------------------------
struct EmuCopy {
    unsigned dst;
    const void* src;
    int bytes;
    int size;  // cp-size: 16, or 4 (conv_mma.cu's element copies); bytes..size zero-filled
};
inline thread_local std::vector<EmuCopy> emu_open;                 // not yet committed
inline thread_local std::vector<std::vector<EmuCopy>> emu_groups;  // committed, oldest first

inline void emu_land(const EmuCopy& c) {
    std::memcpy(emu_smem + c.dst, c.src, c.bytes);
    std::memset(emu_smem + c.dst + c.bytes, 0, c.size - c.bytes);
}

inline void cp_async16(unsigned dst, const void* src, int bytes) {
    if (!emu_ok(dst, 16, 16)) return;
    if (bytes < 0 || bytes > 16) { emu_fail("cp.async src-size out of range", bytes, 16); return; }
    if (bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % 16) {
        emu_fail("cp.async from a global address not 16-byte aligned (addr % 16, bytes)",
                 (long)(reinterpret_cast<std::uintptr_t>(src) % 16), bytes);
        return;
    }
    EmuCopy c{dst, src, bytes, 16};
    if (emu_late) emu_open.push_back(c);
    else emu_land(c);
}
// cp.async.ca with cp-size 4 (kernels/cu/conv_mma.cu's gathered elements)
inline void cp_async4(unsigned dst, const void* src, int bytes) {
    if (!emu_ok(dst, 4, 4)) return;
    if (bytes != 0 && bytes != 4) { emu_fail("cp.async src-size out of range", bytes, 4); return; }
    if (bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % 4) {
        emu_fail("cp.async from a global address not 4-byte aligned (addr % 4, bytes)",
                 (long)(reinterpret_cast<std::uintptr_t>(src) % 4), bytes);
        return;
    }
    EmuCopy c{dst, src, bytes, 4};
    if (emu_late) emu_open.push_back(c);
    else emu_land(c);
}
inline void cp_async_commit() {
    emu_groups.push_back(std::move(emu_open));
    emu_open.clear();
}
template <int N> inline void cp_async_wait() {
    while ((int)emu_groups.size() > N) {
        for (const auto& c : emu_groups.front()) emu_land(c);
        emu_groups.erase(emu_groups.begin());
    }
}

// ---- plain shared loads and stores ---------------------------------------------
inline unsigned lds32(unsigned addr) {
    unsigned v = 0;
    if (emu_ok(addr, 4, 4)) std::memcpy(&v, emu_smem + addr, 4);
    return v;
}
inline void sts(unsigned addr, unsigned short v) {
    if (emu_ok(addr, 2, 2)) std::memcpy(emu_smem + addr, &v, 2);
}
inline void sts(unsigned addr, unsigned v) {
    if (emu_ok(addr, 4, 4)) std::memcpy(emu_smem + addr, &v, 4);
}
inline unsigned short emu_lds16(unsigned addr) {
    unsigned short v = 0;
    if (emu_ok(addr, 2, 2)) std::memcpy(&v, emu_smem + addr, 2);
    return v;
}

// ---- the warp: an exchange area and a barrier per warp -------------------------
struct EmuWarp {
    std::barrier<>* bar;
    unsigned addr[32];
    unsigned a[32][4];
    unsigned b[32][2];
};
inline EmuWarp emu_warp_state[32];
inline std::vector<std::barrier<>*> emu_warp_bars;

inline void emu_setup(int nthreads, int smem_bytes, bool late) {
    emu_smem_bytes = smem_bytes;
    emu_late = late;
    emu_error.clear();
    std::memset(emu_smem, 0xFF, sizeof emu_smem);  // 0xFFFF: NaN in FP16, BF16 and (pairs) FP32
    for (auto* b : emu_warp_bars) delete b;
    emu_warp_bars.clear();
    for (int w = 0; w < nthreads / 32; ++w) {
        emu_warp_bars.push_back(new std::barrier<>(32));
        emu_warp_state[w].bar = emu_warp_bars.back();
    }
}
inline EmuWarp& emu_warp() { return emu_warp_state[threadIdx.x >> 5]; }
inline int emu_lane() { return threadIdx.x & 31; }
inline void emu_warp_sync() { emu_warp().bar->arrive_and_wait(); }

inline void emu_ldsm(unsigned (&r)[4], unsigned addr, bool trans) {
    EmuWarp& w = emu_warp();
    const int l = emu_lane();
    if (addr % 16) emu_fail("ldmatrix row address not 16-byte aligned", addr, 16);
    w.addr[l] = addr;
    emu_warp_sync();
    for (int q = 0; q < 4; ++q) {
        if (!trans) {
            r[q] = lds32(w.addr[q * 8 + (l >> 2)] + 4 * (l & 3));
        } else {
            const unsigned lo = emu_lds16(w.addr[q * 8 + 2 * (l & 3)] + 2 * (l >> 2));
            const unsigned hi = emu_lds16(w.addr[q * 8 + 2 * (l & 3) + 1] + 2 * (l >> 2));
            r[q] = lo | (hi << 16);
        }
    }
    emu_warp_sync();  // the addresses are read before anyone publishes the next ones
}
inline void ldsm_x4(unsigned (&r)[4], unsigned addr) { emu_ldsm(r, addr, false); }
inline void ldsm_x4_trans(unsigned (&r)[4], unsigned addr) { emu_ldsm(r, addr, true); }

// ---- number formats --------------------------------------------------------------
inline float emu_bits_f32(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned to_tf32(unsigned bits) {  // cvt.rna.tf32.f32: nearest, ties away from zero
    if ((bits & 0x7F800000u) == 0x7F800000u) return bits;  // inf, NaN: as they are
    return (bits + 0x1000u) & 0xFFFFE000u;
}
inline float emu_f16(unsigned h) {
    const unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24)
            : e == 31 ? (m ? NAN : INFINITY)
                      : std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
template <int PREC> inline float emu_elem(unsigned reg, int half) {
    if (PREC == 0) return emu_bits_f32(reg);                        // TF32 in a 32-bit register
    const unsigned h = half ? reg >> 16 : reg & 0xFFFFu;            // element 2i in the low half
    return PREC == 1 ? emu_bits_f32(h << 16) : emu_f16(h);          // BF16 : FP16
}

// PREC 0 = TF32 (m16n8k8), 1 = BF16, 2 = FP16 (m16n8k16): gemm_mma.cu's enum.
template <int PREC> inline void mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    EmuWarp& w = emu_warp();
    const int l = emu_lane();
    for (int i = 0; i < 4; ++i) w.a[l][i] = a[i];
    for (int i = 0; i < 2; ++i) w.b[l][i] = b[i];
    emu_warp_sync();
    const int g = l >> 2, t = l & 3;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int r = g + 8 * (e >> 1), col = 2 * t + (e & 1);  // D fragment: c0..c3
        float acc = c[e];
        if (PREC == 0) {
            // A (r, k): lane 4(r%8) + k%4, a[r/8 + 2(k/4)]; B (k, n): lane 4n + k%4, b[k/4]
            for (int k = 0; k < 8; ++k)
                acc += emu_elem<0>(w.a[4 * (r & 7) + (k & 3)][(r >> 3) + 2 * (k >> 2)], 0) *
                       emu_elem<0>(w.b[4 * col + (k & 3)][k >> 2], 0);
        } else {
            // A (r, k): lane 4(r%8) + (k%8)/2, a[r/8 + 2(k/8)], element k%2;
            // B (k, n): lane 4n + (k%8)/2, b[k/8], element k%2
            for (int k = 0; k < 16; ++k) {
                const unsigned ra = w.a[4 * (r & 7) + ((k & 7) >> 1)][(r >> 3) + 2 * (k >> 3)];
                const unsigned rb = w.b[4 * col + ((k & 7) >> 1)][k >> 3];
                acc += emu_elem<PREC>(ra, k & 1) * emu_elem<PREC>(rb, k & 1);
            }
        }
        d[e] = acc;
    }
    emu_warp_sync();
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}
