// negsamp host execution layer: __half with round-to-nearest-even conversions (see cuda_runtime.h).
#pragma once
#include <stdint.h>
#include <string.h>

#include "cuda_runtime.h"

namespace cuda_host {
inline unsigned short float_to_half_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return (unsigned short)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    const int e = (int)(x >> 23) - 127;
    const uint32_t m = x & 0x7fffffu;
    if (e > 15) return (unsigned short)(sign | 0x7c00u);
    if (e >= -14) {  // normal half (a carry out of the mantissa rounds up to the next binade / inf)
        uint32_t h = ((uint32_t)(e + 15) << 10) | (m >> 13);
        const uint32_t rest = m & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return (unsigned short)(sign | h);
    }
    const int shift = -(e + 1);  // subnormal half: units of 2^-24
    if (shift > 24) return (unsigned short)sign;
    const uint32_t full = m | 0x800000u;
    uint32_t h = full >> shift;
    const uint32_t rest = full & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}
inline float half_bits_to_float(unsigned short h) {
    const uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t u;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-08f;  // m · 2^-24, exact
        return s ? -v : v;
    }
    if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
}  // namespace cuda_host

struct __half_raw {
    unsigned short x;
};
struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(cuda_host::float_to_half_bits(f)) {}
    __half(double f) : __x(cuda_host::float_to_half_bits((float)f)) {}
    __half(__half_raw r) : __x(r.x) {}
    operator float() const { return cuda_host::half_bits_to_float(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};
typedef __half half;
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return cuda_host::half_bits_to_float(h.__x); }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
