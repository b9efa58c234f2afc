#include "common.h"

#include <string.h>
#include <unistd.h>

void owl_progress_init(owl_progress *p, int quiet)
{
	memset(p, 0, sizeof *p);
	p->tty = isatty(STDERR_FILENO);
	p->quiet = quiet;
	p->start = owl_now();
}

void owl_progress_update(void *ctx, const char *label, uint64_t done, uint64_t total)
{
	owl_progress *p = ctx;
	if (!p || p->quiet)
		return;
	double now = owl_now();
	if (label && strcmp(label, p->label) != 0) {
		snprintf(p->label, sizeof p->label, "%s", label);
		p->start = now;
		p->last_print = 0;
	}
	/* A terminal gets ~10 redraws a second; a log gets a line every 5 s, so
	 * that CI logs stay readable while long work still shows it is alive. */
	double every = p->tty ? 0.1 : 5.0;
	int finished = total && done >= total;
	if (!finished && now - p->last_print < every)
		return;
	if (finished && !p->tty && p->last_print == 0 && now - p->start < every)
		return; /* a short job done before its first line: stay quiet */
	p->last_print = now;
	double elapsed = now - p->start;
	double rate = elapsed > 0 ? (double)done / elapsed : 0;
	char sdone[32], stotal[32], srate[32], seta[32];
	owl_fmt_bytes(done, sdone, sizeof sdone);
	owl_fmt_bytes(total, stotal, sizeof stotal);
	owl_fmt_bytes((uint64_t)rate, srate, sizeof srate);
	owl_fmt_duration(rate > 0 && total > done ? (double)(total - done) / rate : 0, seta,
			 sizeof seta);
	if (p->tty) {
		int width = 24, fill = total ? (int)((double)done / (double)total * width) : 0;
		char bar[32];
		for (int i = 0; i < width; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[width] = 0;
		fprintf(stderr, "\r%-28.28s [%s] %s / %s  %s/s  eta %s   ", p->label, bar, sdone,
			total ? stotal : "?", srate, seta);
		if (finished)
			fputc('\n', stderr);
	} else {
		fprintf(stderr, "%s: %s / %s  %s/s\n", p->label, sdone, total ? stotal : "?", srate);
	}
	fflush(stderr);
}

void owl_progress_finish(owl_progress *p)
{
	if (p && !p->quiet && p->tty && p->last_print > 0)
		fflush(stderr);
}
