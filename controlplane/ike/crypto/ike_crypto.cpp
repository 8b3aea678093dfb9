#include "espresso/cp/ike_crypto.h"
