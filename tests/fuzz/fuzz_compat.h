/* Force-included in -DNS_FUZZ=ON builds (clang 14): clang 14 rejects the "f16c" feature name
 * that src/similarity.c's CPU dispatch asks __builtin_cpu_supports about. The fuzz build takes
 * the portable paths everywhere; no parser under fuzz reaches that code. */
#define __builtin_cpu_supports(feature) 0
