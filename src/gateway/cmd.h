/* `drover gateway`, the router process (gateway/cmd.c). */
#ifndef DROVER_GATEWAY_CMD_H
#define DROVER_GATEWAY_CMD_H

/* argv[1] is "gateway"; returns the exit status. */
int gateway_cmd_main(int argc, char **argv);

#endif
