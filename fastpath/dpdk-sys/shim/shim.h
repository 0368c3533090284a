/* Out-of-line wrappers for the DPDK `static inline` functions and macros the
 * data plane needs. bindgen cannot bind inline functions; these one-liners
 * give them a symbol. Every function is prefixed `fp_`. */
#ifndef FP_SHIM_H
#define FP_SHIM_H
#include <stdint.h>
#include <rte_mbuf.h>

uint16_t fp_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t fp_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *fp_pktmbuf_alloc(struct rte_mempool *mp);
int fp_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int count);
void fp_pktmbuf_free(struct rte_mbuf *m);
void fp_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned int count);
char *fp_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *fp_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *fp_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int fp_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t fp_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t fp_pktmbuf_tailroom(const struct rte_mbuf *m);
int fp_pktmbuf_is_contiguous(const struct rte_mbuf *m);
int fp_pktmbuf_linearize(struct rte_mbuf *m);
void fp_prefetch0(const void *p);
uint64_t fp_rdtsc(void);
unsigned int fp_lcore_id(void);
int fp_errno(void);
unsigned int fp_socket_id(void);
#endif
