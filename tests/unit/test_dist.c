/* engine/dist: the launchers' environments, and the TCP rendezvous between
 * real processes on loopback (forked: the parent is rank 0, each child one
 * other rank): an NCCL-sized id from rank 0, an all-gather, the same-value
 * check and its failure, the comm's sums, and the errors of a rendezvous
 * that does not happen. */
#define _GNU_SOURCE
#include "test.h"

#include "engine/dist.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const launcher_vars[] = {
	"OWL_DIST", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
	"PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS",
	"SLURM_LOCALID", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS", NULL,
};

static void clear_env(void)
{
	for (const char *const *v = launcher_vars; *v; v++)
		unsetenv(*v);
}

static void test_detect_none(void)
{
	clear_env();
	engine_dist_env e;
	owl_err err = {0};
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_NONE);
	CHECK_INT(e.size, 1);
	CHECK_INT(e.rank, 0);
	engine_dist *d = NULL;
	CHECK_INT(engine_dist_open(NULL, &d, &err), 0);
	CHECK_INT(engine_dist_size(d), 1);
	CHECK_STR(engine_dist_transport(d), "none");
	/* Collectives of one process move nothing and succeed. */
	char buf[8] = "abcdefg", all[8];
	CHECK_INT(engine_dist_bcast(d, buf, sizeof buf, &err), 0);
	CHECK_INT(engine_dist_allgather(d, buf, sizeof buf, all, &err), 0);
	CHECK_STR(all, "abcdefg");
	CHECK_INT(engine_dist_check_same(d, "owl build", "x", &err), 0);
	kernels_comm c;
	CHECK_INT(engine_dist_comm(d, 2, &c, &err), OWL_EUSAGE);
	engine_dist_close(d, 0);
	/* A rendezvous without a launcher is a mistake, said so. */
	engine_dist_opts o = {.rendezvous = "127.0.0.1:1"};
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "no launcher"), "%s", err.msg);
}

static void test_detect_openmpi(void)
{
	clear_env();
	setenv("OMPI_COMM_WORLD_RANK", "3", 1);
	setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
	setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
	/* mpirun inside a Slurm step: MPI's variables win */
	setenv("SLURM_PROCID", "0", 1);
	setenv("SLURM_NTASKS", "1", 1);
	engine_dist_env e;
	owl_err err = {0};
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_OPENMPI);
	CHECK_STR(engine_dist_launcher_name(e.launcher), "openmpi");
	CHECK_INT(e.rank, 3);
	CHECK_INT(e.size, 4);
	CHECK_INT(e.local_rank, 1);
	CHECK_INT(e.mpi, 1);
	/* OWL_DIST=none: one process whatever the launcher says */
	setenv("OWL_DIST", "none", 1);
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.size, 1);
	CHECK_INT(e.launcher, ENGINE_DIST_NONE);
	clear_env();
}

static void test_detect_pmi_pmix(void)
{
	clear_env();
	setenv("PMIX_RANK", "2", 1);
	setenv("SLURM_NTASKS", "8", 1);
	setenv("SLURM_LOCALID", "2", 1);
	engine_dist_env e;
	owl_err err = {0};
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_PMIX);
	CHECK_INT(e.rank, 2);
	CHECK_INT(e.size, 8);
	CHECK_INT(e.local_rank, 2);
	CHECK_INT(e.mpi, 1);
	clear_env();
	/* PMIx alone names no size: MPI tells it */
	setenv("PMIX_RANK", "0", 1);
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.size, 0);
	clear_env();
	setenv("PMI_RANK", "1", 1);
	setenv("PMI_SIZE", "2", 1);
	setenv("MPI_LOCALRANKID", "1", 1);
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_PMI);
	CHECK_INT(e.rank, 1);
	CHECK_INT(e.size, 2);
	CHECK_INT(e.local_rank, 1);
	CHECK_INT(e.mpi, 1);
	clear_env();
}

static void test_detect_slurm_lws(void)
{
	clear_env();
	setenv("SLURM_PROCID", "5", 1);
	setenv("SLURM_NTASKS", "6", 1);
	setenv("SLURM_LOCALID", "1", 1);
	engine_dist_env e;
	owl_err err = {0};
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_SLURM);
	CHECK_INT(e.rank, 5);
	CHECK_INT(e.size, 6);
	CHECK_INT(e.local_rank, 1);
	CHECK_INT(e.mpi, 0);
	/* srun without MPI and without a rendezvous: refused with what to give */
	engine_dist *d = NULL;
	CHECK_INT(engine_dist_open(NULL, &d, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "--rendezvous HOST:PORT") && strstr(err.msg, "slurm"), "%s", err.msg);
	clear_env();
	setenv("LWS_WORKER_INDEX", "1", 1);
	setenv("LWS_GROUP_SIZE", "2", 1);
	setenv("LWS_LEADER_ADDRESS", "owl-0.owl.default", 1);
	CHECK_INT(engine_dist_detect(&e, &err), 0);
	CHECK_INT(e.launcher, ENGINE_DIST_LWS);
	CHECK_STR(engine_dist_launcher_name(e.launcher), "leaderworkerset");
	CHECK_INT(e.rank, 1);
	CHECK_INT(e.size, 2);
	CHECK_INT(e.local_rank, 0);
	CHECK_STR(e.leader, "owl-0.owl.default");
	clear_env();
}

static void test_detect_malformed(void)
{
	clear_env();
	engine_dist_env e;
	owl_err err = {0};
	setenv("OMPI_COMM_WORLD_RANK", "one", 1);
	setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
	CHECK_INT(engine_dist_detect(&e, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "OMPI_COMM_WORLD_RANK") && strstr(err.msg, "'one'"), "%s", err.msg);
	clear_env();
	setenv("SLURM_PROCID", "4", 1);
	setenv("SLURM_NTASKS", "4", 1);
	CHECK_INT(engine_dist_detect(&e, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "rank 4 of 4"), "%s", err.msg);
	clear_env();
	setenv("SLURM_PROCID", "0", 1);
	CHECK_INT(engine_dist_detect(&e, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "SLURM_NTASKS"), "%s", err.msg);
	clear_env();
	setenv("LWS_WORKER_INDEX", "0", 1);
	setenv("LWS_GROUP_SIZE", "-2", 1);
	CHECK_INT(engine_dist_detect(&e, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "LWS_GROUP_SIZE"), "%s", err.msg);
	clear_env();
}

/* ---- the rendezvous, between processes ----------------------------------------- */

/* A port nobody listens on now (the kernel's choice). */
static int free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof a;
	int port = -1;
	if (bind(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	close(s);
	return port;
}

static void set_slurm(int rank, int size)
{
	clear_env();
	char r[16], n[16];
	snprintf(r, sizeof r, "%d", rank);
	snprintf(n, sizeof n, "%d", size);
	setenv("SLURM_PROCID", r, 1);
	setenv("SLURM_NTASKS", n, 1);
	setenv("SLURM_LOCALID", r, 1);
}

enum { WORLD = 3, TP = 6 };

/* The partial sum of global rank g at element i: distinct, inexact values,
 * so that the order of the additions shows in the bits. Made once into a
 * table, so that the values summed and the values the sum is checked
 * against are the same bits however the compiler contracts the arithmetic. */
static float parts[TP][1000];

static void make_parts(void)
{
	for (int g = 0; g < TP; g++)
		for (size_t i = 0; i < 1000; i++)
			parts[g][i] = 0.1f * (float)(g + 1) + 1e-3f * (float)i / 7.0f;
}

static float part_value(int g, size_t i) { return parts[g][i]; }

/* Everything one rank does, the same on every rank (SPMD). Returns a bit
 * mask of the checks that failed, so a child can report through its exit
 * status; the parent (rank 0) also gets the messages. */
static int rank_body(int rank, const char *where, char *why, size_t whylen)
{
	int bad = 0;
	set_slurm(rank, WORLD);
	engine_dist *d = NULL;
	owl_err err = {0};
	engine_dist_opts o = {.rendezvous = where, .timeout_s = 20};
	if (engine_dist_open(&o, &d, &err)) {
		snprintf(why, whylen, "open: %s", err.msg);
		return 1;
	}
	if (engine_dist_rank(d) != rank || engine_dist_size(d) != WORLD ||
	    strcmp(engine_dist_transport(d), "tcp") != 0)
		bad |= 2;
	/* An NCCL unique id: 128 opaque bytes made on rank 0. */
	uint8_t id[128];
	for (int i = 0; i < 128; i++)
		id[i] = rank == 0 ? (uint8_t)(i * 37 + 11) : 0xEE;
	if (engine_dist_bcast(d, id, sizeof id, &err))
		bad |= 4, snprintf(why, whylen, "bcast: %s", err.msg);
	for (int i = 0; i < 128; i++)
		if (id[i] != (uint8_t)(i * 37 + 11))
			bad |= 4;
	/* Records of every rank, in rank order. */
	char rec[16], all[WORLD][16];
	snprintf(rec, sizeof rec, "rank-%d", rank);
	if (engine_dist_allgather(d, rec, sizeof rec, all, &err))
		bad |= 8, snprintf(why, whylen, "allgather: %s", err.msg);
	for (int r = 0; r < WORLD; r++) {
		char want[16];
		snprintf(want, sizeof want, "rank-%d", r);
		if (strcmp(all[r], want) != 0)
			bad |= 8;
	}
	/* The same value everywhere passes; rank 2's other digest fails on
	 * every rank with the same message. */
	if (engine_dist_check_same(d, "owl build", "owl 0.1.0 sha256:abc", &err))
		bad |= 16, snprintf(why, whylen, "check_same: %s", err.msg);
	int rc = engine_dist_check_same(d, "model digest", rank == 2 ? "sha256:bbbb" : "sha256:aaaa",
					 &err);
	if (rc != OWL_EINTEGRITY ||
	    !strstr(err.msg, "rank 2 has another model digest than rank 0: sha256:bbbb, rank 0 has "
			     "sha256:aaaa"))
		bad |= 32, snprintf(why, whylen, "mismatch: %d %s", rc, err.msg);
	/* The comm: TP ranks over WORLD processes, two each. */
	kernels_comm c;
	if (engine_dist_comm(d, TP, &c, &err) || c.local != TP / WORLD || c.first != rank * c.local ||
	    c.size != TP || strcmp(c.name, "tcp") != 0)
		bad |= 64, snprintf(why, whylen, "comm: %s", err.msg);
	enum { N = 1000 };
	float *bufs[TP / WORLD];
	for (int r = 0; r < c.local; r++) {
		bufs[r] = malloc(N * sizeof(float));
		for (size_t i = 0; i < N; i++)
			bufs[r][i] = part_value(c.first + r, i);
	}
	if (c.all_reduce(&c, bufs, N, &err))
		bad |= 128, snprintf(why, whylen, "all_reduce: %s", err.msg);
	/* The order the comm promises: each process's ranks, then the
	 * processes' sums in rank order. */
	for (size_t i = 0; i < N; i++) {
		float total = 0;
		for (int p = 0; p < WORLD; p++) {
			float s = 0;
			for (int r = 0; r < TP / WORLD; r++)
				s += part_value(p * (TP / WORLD) + r, i);
			total += s;
		}
		for (int r = 0; r < c.local; r++)
			if (memcmp(&bufs[r][i], &total, sizeof total) != 0)
				bad |= 128;
	}
	/* Every process holds the same bits: gathered and compared. */
	float mine = bufs[0][N / 2], theirs[WORLD];
	if (engine_dist_allgather(d, &mine, sizeof mine, theirs, &err) ||
	    memcmp(&theirs[0], &theirs[1], sizeof mine) || memcmp(&theirs[0], &theirs[2], sizeof mine))
		bad |= 128;
	/* all_gather: every local rank's output is every global rank's input. */
	float *ins[TP / WORLD], *outs[TP / WORLD];
	for (int r = 0; r < c.local; r++) {
		ins[r] = malloc(4 * sizeof(float));
		outs[r] = malloc(4 * TP * sizeof(float));
		for (int k = 0; k < 4; k++)
			ins[r][k] = (float)(100 * (c.first + r) + k);
	}
	if (c.all_gather(&c, outs, (const float *const *)ins, 4, &err))
		bad |= 256, snprintf(why, whylen, "all_gather: %s", err.msg);
	for (int r = 0; r < c.local; r++)
		for (int g = 0; g < TP; g++)
			for (int k = 0; k < 4; k++)
				if (outs[r][g * 4 + k] != (float)(100 * g + k))
					bad |= 256;
	if (c.barrier(&c, &err))
		bad |= 512;
	for (int r = 0; r < c.local; r++)
		free(bufs[r]), free(ins[r]), free(outs[r]);
	engine_dist_close(d, 0);
	return bad;
}

static void test_rendezvous(void)
{
	make_parts();
	int port = free_port();
	char where[64];
	snprintf(where, sizeof where, "127.0.0.1:%d", port);
	pid_t kids[WORLD];
	for (int r = 1; r < WORLD; r++) {
		kids[r] = fork();
		if (kids[r] == 0) {
			char why[1200] = "";
			int bad = rank_body(r, where, why, sizeof why);
			if (bad && *why)
				fprintf(stderr, "rank %d: %s\n", r, why);
			_exit(bad & 0xff ? bad & 0xff : bad ? 0x80 : 0);
		}
	}
	char why[1200] = "";
	int bad = rank_body(0, where, why, sizeof why);
	CHECK(bad == 0, "rank 0 failed checks 0x%x: %s", bad, why);
	for (int r = 1; r < WORLD; r++) {
		int st = 0;
		waitpid(kids[r], &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank %d failed checks 0x%x", r,
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
	clear_env();
}

/* Rank 0 waits for a rank that never comes: a timeout naming it. */
static void test_rendezvous_timeout(void)
{
	char where[64];
	snprintf(where, sizeof where, "127.0.0.1:%d", free_port());
	set_slurm(0, 3);
	engine_dist *d = NULL;
	owl_err err = {0};
	engine_dist_opts o = {.rendezvous = where, .timeout_s = 1};
	double t0 = owl_now();
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EFAIL);
	double took = owl_now() - t0;
	CHECK(took >= 0.9 && took < 5, "gave up after %.2f s", took);
	CHECK(strstr(err.msg, "waited 1 s") && strstr(err.msg, "ranks 1, 2 never connected") &&
	      strstr(err.msg, where), "%s", err.msg);
	/* A rank whose rank 0 never listens says so too. */
	set_slurm(1, 2);
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "rank 1 could not reach rank 0") && strstr(err.msg, where), "%s",
	      err.msg);
	/* Not HOST:PORT */
	o.rendezvous = "localhost";
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "not HOST:PORT"), "%s", err.msg);
	o.rendezvous = "localhost:99999";
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EUSAGE);
	clear_env();
}

/* A peer of another launch size, and a peer that leaves: clear errors, not hangs. */
static void test_rendezvous_disagreement(void)
{
	char where[64];
	snprintf(where, sizeof where, "127.0.0.1:%d", free_port());
	pid_t kid = fork();
	if (kid == 0) {
		set_slurm(1, 3); /* it thinks the launch has 3 processes */
		engine_dist *d = NULL;
		owl_err err = {0};
		engine_dist_opts o = {.rendezvous = where, .timeout_s = 3};
		int rc = engine_dist_open(&o, &d, &err);
		engine_dist_close(d, 1);
		_exit(rc ? 0 : 1); /* rank 0 refuses it, so it cannot join */
	}
	set_slurm(0, 2);
	engine_dist *d = NULL;
	owl_err err = {0};
	engine_dist_opts o = {.rendezvous = where, .timeout_s = 5};
	CHECK_INT(engine_dist_open(&o, &d, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "rank 1 joined the rendezvous") && strstr(err.msg, "for 3 processes") &&
	      strstr(err.msg, "one of 2"), "%s", err.msg);
	int st = 0;
	waitpid(kid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the rank of another size joined");

	snprintf(where, sizeof where, "127.0.0.1:%d", free_port());
	kid = fork();
	if (kid == 0) {
		set_slurm(1, 2);
		engine_dist *dd = NULL;
		owl_err e = {0};
		engine_dist_opts oo = {.rendezvous = where, .timeout_s = 5};
		_exit(engine_dist_open(&oo, &dd, &e) ? 1 : 0); /* joins, then leaves at once */
	}
	set_slurm(0, 2);
	CHECK_INT(engine_dist_open(&o, &d, &err), 0);
	char rec[8] = "x", all[16];
	int rc = engine_dist_allgather(d, rec, sizeof rec, all, &err);
	CHECK_INT(rc, OWL_EFAIL);
	CHECK(strstr(err.msg, "rank 1 closed its connection"), "%s", err.msg);
	/* A message that is not what every process expects is refused. */
	CHECK_INT(engine_dist_allgather(d, rec, 2u << 20, all, &err), OWL_EUSAGE);
	engine_dist_close(d, 0);
	waitpid(kid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the leaving rank could not join");
	clear_env();
}


int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	RUN_TEST(test_detect_none);
	RUN_TEST(test_detect_openmpi);
	RUN_TEST(test_detect_pmi_pmix);
	RUN_TEST(test_detect_slurm_lws);
	RUN_TEST(test_detect_malformed);
	RUN_TEST(test_rendezvous);
	RUN_TEST(test_rendezvous_timeout);
	RUN_TEST(test_rendezvous_disagreement);
	TEST_MAIN_END();
}
