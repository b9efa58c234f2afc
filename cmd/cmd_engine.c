/* owl engine verbs. */
#include "cmd.h"

const owl_command cmd_engine_commands[] = {
	{0},
};
