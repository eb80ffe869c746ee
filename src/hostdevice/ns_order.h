/* The one order of every ranking in negsamp (mining's top-k, sampling's Gumbel-top-m, on both
 * backends): a comes before b when its score is higher, or the scores are equal and its index
 * (corpus row, candidate column) is lower. A total order when indices are distinct, so the CPU
 * and CUDA backends return the same list for the same scores. */
#ifndef NS_ORDER_H
#define NS_ORDER_H

#include <stdint.h>

#include "ns_hd.h"

NS_HD NS_MATH_INLINE int ns_before(float sa, int64_t ia, float sb, int64_t ib) {
    return sa > sb || (sa == sb && ia < ib);
}

#endif
