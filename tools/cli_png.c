/* PNG plots without a plotting program: an RGB canvas, a few drawing calls (filled rectangles
 * blended over the canvas, lines), and a PNG encoder (signature, IHDR, one IDAT compressed by
 * zlib's deflate, IEND; CRC-32 from zlib). Used by `negsamp inspect`. */
#define _GNU_SOURCE
#include "cli_png.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int png_canvas_init(png_canvas *c, int w, int h) {
    c->w = w;
    c->h = h;
    c->rgb = malloc((size_t)w * (size_t)h * 3);
    if (!c->rgb) return -1;
    memset(c->rgb, 255, (size_t)w * (size_t)h * 3);
    return 0;
}

void png_canvas_free(png_canvas *c) {
    free(c->rgb);
    c->rgb = NULL;
}

/* Pixels [x0, x1) x [y0, y1) (clipped) blended with color at alpha (0..256). */
void png_fill(png_canvas *c, int x0, int y0, int x1, int y1, uint32_t color, int alpha) {
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > c->w) x1 = c->w;
    if (y1 > c->h) y1 = c->h;
    int rgb[3] = {(int)(color >> 16 & 255), (int)(color >> 8 & 255), (int)(color & 255)};
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            unsigned char *p = c->rgb + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
            for (int k = 0; k < 3; k++) p[k] = (unsigned char)((p[k] * (256 - alpha) + rgb[k] * alpha) >> 8);
        }
}

/* Bars of n values in the plot area [x0, x1) x [y0, y1) (y grows down), heights v/vmax. */
void png_bars(png_canvas *c, const double *v, int n, double vmax, int x0, int y0, int x1, int y1,
              uint32_t color, int alpha) {
    if (n <= 0 || !(vmax > 0)) return;
    for (int i = 0; i < n; i++) {
        int bx0 = x0 + (int)((long long)(x1 - x0) * i / n);
        int bx1 = x0 + (int)((long long)(x1 - x0) * (i + 1) / n);
        double f = v[i] / vmax;
        if (f > 1) f = 1;
        int top = y1 - (int)(f * (y1 - y0) + 0.5);
        if (v[i] > 0 && top == y1) top = y1 - 1; /* a non-zero bar is always visible */
        png_fill(c, bx0 + (bx1 - bx0 > 3), top, bx1, y1, color, alpha);
    }
}

/* Axes: a frame around the plot area and tick marks every tenth. */
void png_axes(png_canvas *c, int x0, int y0, int x1, int y1) {
    png_fill(c, x0 - 1, y0, x0, y1 + 1, 0x000000, 256);
    png_fill(c, x0 - 1, y1, x1, y1 + 1, 0x000000, 256);
    for (int i = 0; i <= 10; i++) {
        int x = x0 + (x1 - x0) * i / 10, y = y1 - (y1 - y0) * i / 10;
        png_fill(c, x, y1, x + 1, y1 + 5, 0x000000, 256);
        png_fill(c, x0 - 5, y, x0, y + 1, 0x000000, 256);
        if (i) png_fill(c, x0, y, x1, y + 1, 0xdddddd, 256);
    }
}

static void be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

static void chunk(FILE *f, const char *type, const unsigned char *data, uint32_t n) {
    unsigned char hdr[8];
    be32(hdr, n);
    memcpy(hdr + 4, type, 4);
    fwrite(hdr, 1, 8, f);
    if (n) fwrite(data, 1, n, f);
    uLong crc = crc32(0L, (const Bytef *)type, 4);
    if (n) crc = crc32(crc, data, n);
    unsigned char c[4];
    be32(c, (uint32_t)crc);
    fwrite(c, 1, 4, f);
}

int png_write(FILE *f, const png_canvas *c) {
    size_t row = (size_t)c->w * 3 + 1, raw_n = row * (size_t)c->h;
    unsigned char *raw = malloc(raw_n);
    uLongf zn = compressBound((uLong)raw_n);
    unsigned char *z = malloc(zn);
    if (!raw || !z) {
        free(raw);
        free(z);
        return -1;
    }
    for (int y = 0; y < c->h; y++) { /* filter type 0 (none) per scanline */
        raw[(size_t)y * row] = 0;
        memcpy(raw + (size_t)y * row + 1, c->rgb + (size_t)y * (size_t)c->w * 3, row - 1);
    }
    int rc = compress2(z, &zn, raw, (uLong)raw_n, 9) == Z_OK ? 0 : -1;
    if (!rc) {
        static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        unsigned char ihdr[13];
        be32(ihdr, (uint32_t)c->w);
        be32(ihdr + 4, (uint32_t)c->h);
        ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0; /* 8-bit RGB */
        fwrite(sig, 1, 8, f);
        chunk(f, "IHDR", ihdr, 13);
        chunk(f, "IDAT", z, (uint32_t)zn);
        chunk(f, "IEND", NULL, 0);
        rc = ferror(f) ? -1 : 0;
    }
    free(raw);
    free(z);
    return rc;
}
