/* PNG plots written in C (an RGB canvas, filled bars, axes; zlib's deflate for the image data). */
#ifndef NS_CLI_PNG_H
#define NS_CLI_PNG_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    int w, h;
    unsigned char *rgb; /* h rows of w pixels, 3 bytes each */
} png_canvas;

int png_canvas_init(png_canvas *c, int w, int h); /* white; 0 or -1 (out of memory) */
void png_canvas_free(png_canvas *c);
/* color 0xRRGGBB over the canvas at alpha/256 */
void png_fill(png_canvas *c, int x0, int y0, int x1, int y1, uint32_t color, int alpha);
void png_bars(png_canvas *c, const double *v, int n, double vmax, int x0, int y0, int x1, int y1,
              uint32_t color, int alpha);
void png_axes(png_canvas *c, int x0, int y0, int x1, int y1);
int png_write(FILE *f, const png_canvas *c); /* 0 or -1 */

#endif
