/* negsamp fingerprint FILE...: the fingerprint mine and sample record for an input (the
 * checkpoint header, the provenance sidecar's "xxh64"), one "HASH  PATH" line per file, as
 * `xxhsum -H1` prints it. The Parquet wrapper (python/negsamp/parquet.py) records its own
 * inputs with it, and a user can check a sidecar against a file with it. */
#include "cli.h"

#include <string.h>

static const char FINGERPRINT_HELP[] =
    "usage: negsamp fingerprint FILE...\n"
    "\n"
    "Prints each file's fingerprint as mine and sample record it in the checkpoint header and\n"
    "the provenance sidecar (\"xxh64\": XXH64 of the file's bytes, seed 0, in hex; the same\n"
    "value as `xxhsum -H1 FILE`), one \"HASH  FILE\" line per file. Not cryptographic: it\n"
    "detects changed inputs, not adversaries.\n"
    "\n"
    "Example:\n"
    "  negsamp fingerprint corpus.npy queries.npy\n";

int cli_cmd_fingerprint(int argc, char **argv) {
    if (argc < 2) return cli_usage_error("name at least one FILE");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(FINGERPRINT_HELP, stdout);
            return CLI_OK;
        }
        if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("unknown option '%s'", argv[i]);
    }
    /* Large files: one progress line over them all on a terminal; a file that cannot be read
     * is reported below, by its own call. */
    cli_named_path in[CLI_MAX_FILES];
    int n = 0;
    for (int i = 1; i < argc && n < CLI_MAX_FILES; i++) in[n++] = (cli_named_path){"FILE", argv[i]};
    int silent = cli_silent;
    cli_silent = 1;
    (void)cli_fingerprint_inputs(in, n, 0);
    cli_silent = silent;
    int rc = CLI_OK;
    for (int i = 1; i < argc; i++) {
        uint64_t h;
        int64_t size;
        if (cli_file_fingerprint(argv[i], &h, &size)) {
            rc = CLI_RUNTIME;
            continue;
        }
        printf("%016llx  %s\n", (unsigned long long)h, argv[i]);
    }
    return rc;
}
