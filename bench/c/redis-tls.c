// Redis round trips through the Redis plugins' connect path (plugins/redis-routing/redis_tls.h),
// plain and over TLS, against one redis-server with both ports: SET and GET of a small value (a
// route) and of a 320 KB one (a 10,000-order book's transfer blob). Run by bench/redis-tls.sh.
// Usage: redis-tls PLAIN-PORT TLS-PORT CERT-DIR (ca.crt, client.crt, client.key there)
#define _GNU_SOURCE
#include "redis_tls.h"
#include <stdlib.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
static void run(const char*label,int port,redis_tls*tls,size_t n){
  char err[600]; struct timeval tv={2,0};
  redisContext*c=redis_connect("127.0.0.1",port,tv,tls,err,sizeof err); if(!c){printf("%s\n",err);exit(1);}
  redisSetTimeout(c,tv);
  char*b=malloc(n); memset(b,7,n); double v[200];
  for(int i=0;i<200;i++){const char*a[]={"SET","k",b};size_t l[]={3,1,n};double t=now();redisReply*r=redisCommandArgv(c,3,a,l);v[i]=now()-t;if(!r){printf("fail %s\n",c->errstr);exit(1);}freeReplyObject(r);}
  double g[200]; for(int i=0;i<200;i++){const char*a[]={"GET","k"};double t=now();redisReply*r=redisCommandArgv(c,2,a,NULL);g[i]=now()-t;freeReplyObject(r);}
  qsort(v,200,sizeof(double),cmp); qsort(g,200,sizeof(double),cmp);
  printf("%s %zu bytes: SET p50 %.3f p99 %.3f ms; GET p50 %.3f p99 %.3f ms\n",label,n,v[100],v[197],g[100],g[197]);
  redisFree(c); free(b);
}
int main(int argc,char**argv){
  redis_tls plain, tls; char err[600];
  redis_tls_make(&plain,0,0,0,0,0,"127.0.0.1",err,sizeof err);
  if(argc<4){fprintf(stderr,"usage: redis-tls PLAIN-PORT TLS-PORT CERT-DIR\n");return 2;}
  char ca[512],cert[512],key[512];
  snprintf(ca,sizeof ca,"%s/ca.crt",argv[3]); snprintf(cert,sizeof cert,"%s/client.crt",argv[3]); snprintf(key,sizeof key,"%s/client.key",argv[3]);
  if(!redis_tls_make(&tls,1,ca,cert,key,0,"127.0.0.1",err,sizeof err)){printf("%s\n",err);return 1;}
  size_t sizes[]={100,320000};
  for(int r=0;r<2;r++) for(int s=0;s<2;s++){ run("plain",atoi(argv[1]),&plain,sizes[s]); run("tls  ",atoi(argv[2]),&tls,sizes[s]); }
  redis_tls_free(&tls); return 0;
}
