/* PNG plots written in C (an RGB canvas, filled bars, axes, bitmap-font labels; zlib's deflate
 * for the image data). */
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
/* Text in a 5x7 bitmap font (cli_png_text.c), cells of 6x8 pixels times scale: png_text from
 * the top-left corner (x, y) to the right; png_text_up rotated a quarter turn, from the
 * bottom-left corner upwards (a y-axis label). Letters are drawn as capitals. */
void png_text(png_canvas *c, int x, int y, const char *s, int scale, uint32_t color);
void png_text_up(png_canvas *c, int x, int y, const char *s, int scale, uint32_t color);
int png_text_width(const char *s, int scale);

#endif
