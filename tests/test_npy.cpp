// ns_npy_open / ns_npy_matrix / ns_npy_close: v1/v2/v3 headers, f32 and f16, 1-D and 2-D, and
// every malformed file (status, message naming the path and the problem, *file NULL).
#include "ns_test_util.h"

#include "../src/ns_internal.h"

#include <cstdio>
#include <sys/stat.h>
#include <unistd.h>

using namespace nstest;

namespace {

struct TempFile {
    std::string path;
    explicit TempFile(const std::string &bytes) {
        char tmpl[] = "/tmp/ns_npy_XXXXXX";
        int fd = mkstemp(tmpl);
        path = tmpl;
        if (fd >= 0) {
            ssize_t w = write(fd, bytes.data(), bytes.size());
            (void)w;
            close(fd);
        }
    }
    ~TempFile() { std::remove(path.c_str()); }
};

// A .npy image as numpy writes it: magic, version, header length, dict padded with spaces and
// a newline so that the data starts on a 64-byte boundary.
std::string npy_bytes(int major, const std::string &dict_in, const std::string &data) {
    size_t prefix = major == 1 ? 10 : 12;
    std::string dict = dict_in;
    size_t pad = (64 - (prefix + dict.size() + 1) % 64) % 64;
    dict += std::string(pad, ' ') + "\n";
    std::string out = "\x93NUMPY";
    out += (char)major;
    out += (char)0;
    size_t n = dict.size();
    out += (char)(n & 0xff);
    out += (char)((n >> 8) & 0xff);
    if (major != 1) {
        out += (char)((n >> 16) & 0xff);
        out += (char)((n >> 24) & 0xff);
    }
    return out + dict + data;
}

std::string dict(const std::string &descr, const std::string &shape, bool fortran = false) {
    return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
           ", 'shape': " + shape + ", }";
}

template <class T> std::string raw(const std::vector<T> &v) {
    return std::string(reinterpret_cast<const char *>(v.data()), v.size() * sizeof(T));
}

TEST(Npy, OpensF32TwoDimensionalV1) {
    std::vector<float> v = random_floats(12, 1);
    TempFile f(npy_bytes(1, dict("<f4", "(3, 4)"), raw(v)));
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open(f.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ns_matrix m = ns_npy_matrix(file);
    EXPECT_EQ(m.dtype, NS_F32);
    EXPECT_EQ(m.rows, 3);
    EXPECT_EQ(m.cols, 4);
    EXPECT_EQ(m.ld, 4);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data) % 64, 0u);
    EXPECT_EQ(std::memcmp(m.data, v.data(), 48), 0);
    EXPECT_EQ(ns_npy_close(file), NS_OK);
}

TEST(Npy, OpensF16V2AndV3AndOneDimensional) {
    std::vector<uint16_t> h(10);
    for (int i = 0; i < 10; i++) h[i] = ns_f32_to_f16(0.25f * (float)i - 1.0f);
    for (int major : {2, 3}) {
        TempFile f(npy_bytes(major, dict("<f2", "(5, 2)"), raw(h)));
        ns_npy_file *file = nullptr;
        ASSERT_EQ(ns_npy_open(f.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
        ns_matrix m = ns_npy_matrix(file);
        EXPECT_EQ(m.dtype, NS_F16);
        EXPECT_EQ(m.rows, 5);
        EXPECT_EQ(m.cols, 2);
        EXPECT_EQ(std::memcmp(m.data, h.data(), 20), 0);
        ns_npy_close(file);
    }
    TempFile f1(npy_bytes(1, dict("<f2", "(10,)"), raw(h)));
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open(f1.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ns_matrix m = ns_npy_matrix(file);
    EXPECT_EQ(m.rows, 10);
    EXPECT_EQ(m.cols, 1);
    ns_npy_close(file);
}

TEST(Npy, HeaderVariantsNumpyMayWrite) {
    std::vector<float> v = random_floats(6, 2);
    // double quotes, no trailing comma, keys in another order, extra spaces
    TempFile f(npy_bytes(1, "{\"shape\": ( 2 ,3 ), \"fortran_order\": False, \"descr\": \"<f4\"}",
                         raw(v)));
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open(f.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    EXPECT_EQ(ns_npy_matrix(file).rows, 2);
    EXPECT_EQ(ns_npy_matrix(file).cols, 3);
    ns_npy_close(file);
}

TEST(Npy, EmptyArrayOpens) {
    TempFile f(npy_bytes(1, dict("<f4", "(0, 384)"), ""));
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open(f.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    EXPECT_EQ(ns_npy_matrix(file).rows, 0);
    ns_npy_close(file);
}

TEST(Npy, NullsAreHandled) {
    ns_matrix m = ns_npy_matrix(nullptr);
    EXPECT_EQ(m.data, nullptr);
    EXPECT_EQ(m.rows, 0);
    EXPECT_EQ(ns_npy_close(nullptr), NS_OK);
    EXPECT_EQ(ns_npy_open("/tmp/x.npy", nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("file is NULL"), std::string::npos);
    ns_npy_file *file = reinterpret_cast<ns_npy_file *>(0x1);
    EXPECT_EQ(ns_npy_open(nullptr, &file), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(file, nullptr);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("path is NULL"), std::string::npos);
}

void expect_open_fails(const std::string &bytes, ns_status want, const std::string &needle) {
    TempFile f(bytes);
    ns_npy_file *file = reinterpret_cast<ns_npy_file *>(0x1);
    EXPECT_EQ(ns_npy_open(f.path.c_str(), &file), want) << ns_last_error(nullptr);
    EXPECT_EQ(file, nullptr);
    std::string msg = ns_last_error(nullptr);
    EXPECT_NE(msg.find(f.path), std::string::npos) << "the message should name the path: " << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << msg;
}

TEST(Npy, MalformedFilesAreReported) {
    std::vector<float> v = random_floats(12, 3);
    std::string good = npy_bytes(1, dict("<f4", "(3, 4)"), raw(v));
    {
        ns_npy_file *file = nullptr;
        EXPECT_EQ(ns_npy_open("/nonexistent/dir/x.npy", &file), NS_ERR_IO);
        EXPECT_NE(std::string(ns_last_error(nullptr)).find("/nonexistent/dir/x.npy: cannot open"),
                  std::string::npos)
            << ns_last_error(nullptr);
    }
    expect_open_fails("", NS_ERR_IO, "too short");
    expect_open_fails("garbage garbage garbage", NS_ERR_IO, "bad magic");
    std::string bad_magic = good;
    bad_magic[1] = 'X';
    expect_open_fails(bad_magic, NS_ERR_IO, "bad magic");
    // the data cut short: the message gives both sizes and the shape
    std::string cut = good.substr(0, good.size() - 5);
    expect_open_fails(cut, NS_ERR_IO,
                      "file has " + std::to_string(cut.size()) + " bytes but header says 3×4 f32 (" +
                          std::to_string(good.size()) + " bytes)");
    expect_open_fails(npy_bytes(1, dict("<f4", "(200000, 384)"), raw(v)), NS_ERR_IO,
                      "header says 200000×384 f32 (307200128 bytes)");
    // the header itself cut short
    expect_open_fails(good.substr(0, 30), NS_ERR_IO, "header claims");
    std::string v9 = good;
    v9[6] = 9;
    expect_open_fails(v9, NS_ERR_IO, "version 9");
    expect_open_fails(npy_bytes(1, dict("<f4", "(3, 4)", true), raw(v)), NS_ERR_UNSUPPORTED,
                      "fortran_order is True");
    expect_open_fails(npy_bytes(1, dict("<f8", "(3, 2)"), raw(v)), NS_ERR_UNSUPPORTED,
                      "dtype '<f8'");
    expect_open_fails(npy_bytes(1, dict(">f4", "(3, 4)"), raw(v)), NS_ERR_UNSUPPORTED,
                      "dtype '>f4'");
    expect_open_fails(npy_bytes(1, dict("<f4", "(2, 3, 2)"), raw(v)), NS_ERR_UNSUPPORTED,
                      "3 dimensions");
    expect_open_fails(npy_bytes(1, dict("<f4", "()"), raw(v)), NS_ERR_UNSUPPORTED, "0 dimensions");
    expect_open_fails(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False}", raw(v)), NS_ERR_IO,
                      "no 'shape'");
    expect_open_fails(npy_bytes(1, "{'fortran_order': False, 'shape': (3, 4)}", raw(v)),
                      NS_ERR_IO, "no 'descr'");
    expect_open_fails(npy_bytes(1, dict("<f4", "(3, x)"), raw(v)), NS_ERR_IO, "'shape' is malformed");
    expect_open_fails(npy_bytes(1, dict("<f4", "(3, -4)"), raw(v)), NS_ERR_IO, "'shape' is malformed");
    expect_open_fails(npy_bytes(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (3, 4)}", raw(v)),
                      NS_ERR_IO, "fortran_order");
}

// Shapes an attacker writes: each is refused with NS_ERR_IO naming the file and the problem,
// whatever the data behind it (issue 13: the CLI's own parser overflowed on these).
TEST(Npy, HostileShapesAreRefused) {
    std::string one = "x";
    std::vector<float> v = random_floats(12, 5);
    expect_open_fails(npy_bytes(1, dict("<f4", "(2305843009213693952, 1)"), one), NS_ERR_IO,
                      "truncated: file has 129 bytes but header says 2305843009213693952×1 f32");
    expect_open_fails(npy_bytes(1, dict("<i8", "(4611686018427387904, 1)"), one), NS_ERR_IO,
                      "overflows");
    expect_open_fails(npy_bytes(1, dict("<f4", "(2, 4611686018427387904)"), one), NS_ERR_IO,
                      "overflows");
    expect_open_fails(npy_bytes(1, dict("<f2", "(4294967296, 4294967296)"), one), NS_ERR_IO,
                      "overflows");
    expect_open_fails(npy_bytes(1, dict("<f4", "(99999999999999999999, 1)"), one), NS_ERR_IO,
                      "does not fit in 64 bits");
    expect_open_fails(npy_bytes(1, dict("<f4", "(3, 4)"), raw(v) + "xxxx"), NS_ERR_IO,
                      "4 bytes more than its shape");
    expect_open_fails(npy_bytes(2, dict("<f4", "(3, 4)"), raw(v)).substr(0, 11), NS_ERR_IO,
                      "too short for a v2 header");
    expect_open_fails(npy_bytes(1, dict("<i8", "(3, 2)"), raw(v)), NS_ERR_UNSUPPORTED,
                      "'<i8' is not supported");
}

TEST(Npy, IntegerArraysOpenAsArrays) {
    std::vector<int64_t> i64 = {0, 5, -1, 7, 2, 3};
    TempFile f(npy_bytes(1, dict("<i8", "(2, 3)"), raw(i64)));
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open_array(f.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ns_npy_array a;
    ASSERT_EQ(ns_npy_get_array(file, &a), NS_OK);
    EXPECT_EQ(a.dtype, NS_NPY_I64);
    EXPECT_EQ(a.ndim, 2);
    EXPECT_EQ(a.rows, 2);
    EXPECT_EQ(a.cols, 3);
    EXPECT_EQ(static_cast<const int64_t *>(a.data)[3], 7);
    EXPECT_EQ(ns_npy_matrix(file).data, nullptr) << "an integer file has no float matrix";
    ns_npy_close(file);
    std::vector<int32_t> i32 = {4, 9, 1};
    TempFile g(npy_bytes(3, dict("<i4", "(3,)"), raw(i32)));
    ASSERT_EQ(ns_npy_open_array(g.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ASSERT_EQ(ns_npy_get_array(file, &a), NS_OK);
    EXPECT_EQ(a.dtype, NS_NPY_I32);
    EXPECT_EQ(a.ndim, 1);
    EXPECT_EQ(a.rows, 3);
    EXPECT_EQ(a.cols, 1);
    ns_npy_close(file);
    std::vector<float> v = random_floats(4, 2);
    TempFile h(npy_bytes(1, dict("<f4", "(2, 2)"), raw(v)));
    ASSERT_EQ(ns_npy_open_array(h.path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ASSERT_EQ(ns_npy_get_array(file, &a), NS_OK);
    EXPECT_EQ(a.dtype, NS_NPY_F32);
    EXPECT_EQ(ns_npy_matrix(file).rows, 2);
    ns_npy_close(file);
    EXPECT_EQ(ns_npy_get_array(nullptr, &a), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(a.data, nullptr);
    EXPECT_EQ(ns_npy_get_array(file = nullptr, nullptr), NS_ERR_INVALID_ARGUMENT);
}

// A FIFO is refused at once, not waited on (issue 13: `--corpus fifo` blocked forever).
TEST(Npy, FifoIsRefusedWithoutBlocking) {
    char dir[] = "/tmp/ns_npy_fifo_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    std::string path = std::string(dir) + "/f.npy";
    ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
    ns_npy_file *file = nullptr;
    EXPECT_EQ(ns_npy_open(path.c_str(), &file), NS_ERR_IO);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find(path + ": not a regular file (a FIFO)"),
              std::string::npos) << ns_last_error(nullptr);
    std::remove(path.c_str());
    rmdir(dir);
}

TEST(Npy, DirectoryIsNotAFile) {
    ns_npy_file *file = nullptr;
    EXPECT_EQ(ns_npy_open("/tmp", &file), NS_ERR_IO);
    EXPECT_EQ(file, nullptr);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("/tmp: not a regular file"), std::string::npos)
        << ns_last_error(nullptr);
}

}  // namespace
